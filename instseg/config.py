"""Config keys shared by every method of this project, and checks of a finished config."""
import os
from typing import Optional, Sequence

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.data import MetadataCatalog

ROI_ALIGN_IMPLS = ("instseg", "detectron2")
AUTOCAST_DTYPES = ("", "bfloat16", "float16")


def add_instseg_config(cfg: CN) -> None:
    """Add the shared keys to `cfg` (a detectron2 config from ``get_cfg()``), in place."""
    # Which RoIAlign the RoI poolers run: "instseg" = this project's op (csrc/roi_align),
    # "detectron2" = detectron2.layers.ROIAlign (torchvision's op).
    cfg.MODEL.ROI_ALIGN_IMPL = "instseg"
    # detectron2 defaults to "cuda"; fall back to the CPU on machines without a GPU.
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    # Inference (evaluation, Predictor) in mixed precision: torch.autocast on MODEL.DEVICE in this
    # dtype, "bfloat16" or "float16"; "" runs it in float32. Training has detectron2's own switch,
    # SOLVER.AMP.ENABLED (bfloat16 on a CPU, see instseg.engine.Trainer).
    cfg.TEST.AUTOCAST = ""
    # Keep the model's weights, and so the feature maps its convs compute, in channels-last memory
    # format (NHWC), in training and inference: PyTorch's CPU convs then skip their reorders and our
    # RoIAlign pools the maps in place. Same results up to float rounding; on a CPU every method
    # predicts 1.2x-1.5x faster so (README, Benchmarks).
    cfg.MODEL.CHANNELS_LAST = False
    # Evaluation (--eval-only), demo.py and Predictor refuse a model whose weights are not all
    # loaded: MODEL.WEIGHTS empty, or a checkpoint that leaves parameters missing or of another
    # shape (another number of classes). True runs such a partly random model anyway (tests, speed
    # measurements). Training loads what fits and logs the rest, whatever this says.
    cfg.TEST.ALLOW_RANDOM_WEIGHTS = False
    # Training keeps the last this many periodic checkpoints (model_<iteration>.pth) of its run and
    # deletes the older ones; 0 keeps all. model_final.pth is not counted.
    cfg.SOLVER.CHECKPOINTS_TO_KEEP = 2
    _add_fcos_config(cfg)


def _add_fcos_config(cfg: CN) -> None:
    """FCOS, the detector of BlendMask and CenterMask; key names and defaults as in AdelaiDet.
    The number of classes is MODEL.ROI_HEADS.NUM_CLASSES, as for every model of this project."""
    cfg.MODEL.FCOS = CN()
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    cfg.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 128]
    # P6/P7 levels the FPN backbone adds on top of P5 (0, 1 or 2)
    cfg.MODEL.FCOS.TOP_LEVELS = 2
    # boundaries between the levels' ranges of max(l, t, r, b): [64, 128, ...] -> [0, 64], [64, 128], ...
    cfg.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]
    # positives lie within POS_RADIUS strides of the box centre (centre sampling)
    cfg.MODEL.FCOS.CENTER_SAMPLE = True
    cfg.MODEL.FCOS.POS_RADIUS = 1.5
    # head: tower depths (the share tower feeds the other two), norm ("GN", "BN", "SyncBN", "")
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 4
    cfg.MODEL.FCOS.NUM_BOX_CONVS = 4
    cfg.MODEL.FCOS.NUM_SHARE_CONVS = 0
    cfg.MODEL.FCOS.NORM = "GN"
    cfg.MODEL.FCOS.USE_SCALE = True  # a learnable regression scale per level
    cfg.MODEL.FCOS.PRIOR_PROB = 0.01  # initial foreground probability of the classifier
    # focal loss of the classifier
    cfg.MODEL.FCOS.LOSS_ALPHA = 0.25
    cfg.MODEL.FCOS.LOSS_GAMMA = 2.0
    # detection: score threshold (on class score x centerness when THRESH_WITH_CTR), top-k per level
    # before NMS (ranked by class score x centerness), class-aware NMS (none when NMS_TH <= 0), top-k
    # per image after NMS (ties with the last kept too; <= 0: all); *_TRAIN values make the proposals
    # of the mask branch during training
    cfg.MODEL.FCOS.THRESH_WITH_CTR = False
    cfg.MODEL.FCOS.INFERENCE_TH_TRAIN = 0.05
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.05
    cfg.MODEL.FCOS.PRE_NMS_TOPK_TRAIN = 1000
    cfg.MODEL.FCOS.PRE_NMS_TOPK_TEST = 1000
    cfg.MODEL.FCOS.NMS_TH = 0.6
    cfg.MODEL.FCOS.POST_NMS_TOPK_TRAIN = 100
    cfg.MODEL.FCOS.POST_NMS_TOPK_TEST = 100
    # clip the boxes to the image (dropping empty ones) before NMS, so that NMS and the mask branch
    # see the boxes that are drawn. False as AdelaiDet and centermask2: NMS and the masks use the
    # unclipped boxes, which detectron2's detector_postprocess clips only at the end.
    cfg.MODEL.FCOS.CLIP_BEFORE_NMS = False


def check_schedule(cfg: CN) -> None:
    """Training only: raise a ValueError when the learning-rate schedule cannot play out within
    SOLVER.MAX_ITER -- a warm-up that is not over before the last iteration (the learning rate
    would stay a fraction of SOLVER.BASE_LR for the whole run, and the model barely train), or a
    step at or beyond it (it would never lower the learning rate)."""
    max_iter = cfg.SOLVER.MAX_ITER
    problems = []
    if cfg.SOLVER.WARMUP_ITERS >= max_iter:
        problems.append(
            f"SOLVER.WARMUP_ITERS {cfg.SOLVER.WARMUP_ITERS} is not below SOLVER.MAX_ITER {max_iter}: the "
            f"learning rate would still be warming up when training ends; set SOLVER.WARMUP_ITERS to a "
            f"fraction of the run, e.g. {max(max_iter // 10, 0)}"
        )
    late = [step for step in cfg.SOLVER.STEPS if step >= max_iter]
    if late:
        early = tuple(step for step in cfg.SOLVER.STEPS if step < max_iter)
        fractions = (int(max_iter * 0.75), int(max_iter * 0.95))
        problems.append(
            f"SOLVER.STEPS {tuple(cfg.SOLVER.STEPS)} has {tuple(late)} at or beyond SOLVER.MAX_ITER {max_iter}, "
            f"where they would never lower the learning rate; set SOLVER.STEPS to iterations below "
            f"{max_iter}, e.g. \"{tuple(sorted(set(fractions)))}\" (or \"{early}\" to drop them)"
        )
    if problems:
        raise ValueError("the training schedule does not fit in SOLVER.MAX_ITER: " + "; ".join(problems))


def check_config(cfg: CN, dataset_names: Optional[Sequence[str]] = None, advice: str = "") -> None:
    """Raise a ValueError naming the key when a finished config is inconsistent; the number of
    classes is checked against the datasets `dataset_names` (see check_num_classes)."""
    if cfg.MODEL.ROI_ALIGN_IMPL not in ROI_ALIGN_IMPLS:
        raise ValueError(
            f"MODEL.ROI_ALIGN_IMPL must be one of {ROI_ALIGN_IMPLS}, got {cfg.MODEL.ROI_ALIGN_IMPL!r}"
        )
    if cfg.TEST.AUTOCAST not in AUTOCAST_DTYPES:
        raise ValueError(f"TEST.AUTOCAST must be one of {AUTOCAST_DTYPES}, got {cfg.TEST.AUTOCAST!r}")
    check_num_classes(cfg, dataset_names, advice)


def check_num_classes(cfg: CN, dataset_names: Optional[Sequence[str]] = None, advice: str = "") -> None:
    """The number of classes is set once, in MODEL.ROI_HEADS.NUM_CLASSES; it must match every
    dataset of `dataset_names` (default: DATASETS.TRAIN and DATASETS.TEST) whose classes are known
    (those registered with instseg.data.datasets.register_coco_instances are, from the start).
    `advice` ends the error message."""
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if dataset_names is None else dataset_names
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but dataset "
                f"{name!r} has {len(classes)} classes {classes}: set MODEL.ROI_HEADS.NUM_CLASSES "
                f"{len(classes)}{_run_config_hint(cfg, len(classes))}{advice}"
            )


def _run_config_hint(cfg: CN, num_classes: int) -> str:
    """Where MODEL.WEIGHTS comes from a run whose saved config.yaml has `num_classes` classes, a
    pointer to that config: it holds the rest of the run's settings too."""
    saved = os.path.join(os.path.dirname(cfg.MODEL.WEIGHTS), "config.yaml") if cfg.MODEL.WEIGHTS else ""
    if not os.path.isfile(saved):
        return ""
    with open(saved) as f:
        run = yaml.safe_load(f) or {}
    if run.get("MODEL", {}).get("ROI_HEADS", {}).get("NUM_CLASSES") != num_classes:
        return ""
    return f", or use the config of the run that wrote MODEL.WEIGHTS: --config-file {saved}"
