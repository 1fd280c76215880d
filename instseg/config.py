"""The project config: the keys shared by every method, the config of detectron2 plus every method's
keys (get_project_cfg), building it from a file and options with errors that name the key
(build_config), and checks of a finished config."""
import difflib
import os
from typing import Optional, Sequence

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from .data.datasets import check_registered  # importing instseg.data registers the embedded dataset
from .methods import add_method_configs, load_methods

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


def get_project_cfg() -> CN:
    """detectron2's default config plus the keys of this project and of every method found
    (instseg.methods.load_methods: importing a method also registers its models)."""
    import instseg.modeling  # noqa: F401  (registers FCOS, its backbones, the shared RoI heads)

    load_methods()
    cfg = get_cfg()
    add_instseg_config(cfg)
    add_method_configs(cfg)
    return cfg


# what a config is built for -> the datasets whose registration and classes it checks
TASKS = ("train", "eval", "predict")


def build_config(config_file: str = "", opts=(), task: str = "train") -> CN:
    """The project config merged with `config_file` and KEY VALUE `opts`, checked and frozen.

    `task` says which datasets the config is used with, and so are checked: "train": DATASETS.TRAIN
    and DATASETS.TEST must be registered and have MODEL.ROI_HEADS.NUM_CLASSES classes; "eval": only
    DATASETS.TEST; "predict": the registered ones of DATASETS.TEST (Predictor takes the class names
    of a checkpoint written by training, else from DATASETS.TEST[0]: no data is read).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    cfg = get_project_cfg()
    if config_file and not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    if config_file:
        _merge(cfg, cfg.merge_from_file, config_file, f"config file {config_file}")
    _merge(cfg, cfg.merge_from_list, list(opts), "the command-line options")
    if task != "predict":
        check_registered(cfg, ("TRAIN", "TEST") if task == "train" else ("TEST",))
    tested = [n for n in cfg.DATASETS.TEST if task != "predict" or n in DatasetCatalog]
    advice = "; prediction only takes the class names of DATASETS.TEST: DATASETS.TEST \"()\" takes those of the checkpoint"
    check_config(cfg, (list(cfg.DATASETS.TRAIN) if task == "train" else []) + tested, advice if task == "predict" else "")
    cfg.freeze()
    return cfg


def _all_keys(node: CN, prefix: str = ""):
    for name, value in node.items():
        if isinstance(value, CN):
            yield from _all_keys(value, f"{prefix}{name}.")
        else:
            yield prefix + name


# keys of the upstream projects that this project sets in one place instead
REPLACED_KEYS = {
    "MODEL.FCOS.NUM_CLASSES": "MODEL.ROI_HEADS.NUM_CLASSES",
    "MODEL.BASIS_MODULE.NUM_CLASSES": "MODEL.ROI_HEADS.NUM_CLASSES",
}


def _merge(cfg: CN, merge, source, where: str) -> None:
    """`merge(source)` into `cfg`, with yacs's assertions turned into errors that say `where`."""
    try:
        merge(source)
    except (KeyError, AssertionError) as e:  # unknown keys, odd option lists, newer config versions
        message = e.args[0] if e.args else repr(e)
        if "Non-existent" in message:
            raise KeyError(_unknown_key_message(cfg, message, where)) from e
        if "odd length" in message:
            message = f"options must be KEY VALUE pairs, got an odd number of items: {source}"
        raise ValueError(f"{where}: {message}") from e


def _unknown_key_message(cfg: CN, error: str, where: str) -> str:
    """yacs's 'Non-existent (config) key: X' with where it came from and the closest known keys."""
    key = error.rsplit(":", 1)[-1].strip()
    where = f" (in {where})"
    if key in REPLACED_KEYS:
        return f"unknown config key {key}{where}: the number of classes of every model is set once, in {REPLACED_KEYS[key]}"
    close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.8)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config key {key}{where}{hint}"


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
