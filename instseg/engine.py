"""The one trainer and config entry point for every method (projects/train_net.py, demo, tests)."""
import contextlib
import difflib
import logging
import os
import re
import time
import weakref
from typing import Optional

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor, DefaultTrainer, SimpleTrainer, hooks
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter
from torch import nn

from .checkpoint import Checkpointer, TrainingMetadata, load_inference_weights
from .config import add_instseg_config, check_config, check_num_classes, check_schedule
from .data.datasets import check_registered, load_train_dicts
from .data.mapper import InstSegDatasetMapper
from .distributed import check_replicas_identical
from .evaluation import BoundaryCOCOEvaluator
from .logs import JSONWriter
from .utils import detectron2_has_compiled_ops

logger = logging.getLogger(__name__)


def get_project_cfg() -> CfgNode:
    """detectron2's default config plus the keys of this project and of every method in it.

    Importing the method packages also registers their models in detectron2's registries.
    """
    import blendmask
    import centermask
    import instseg.data  # noqa: F401  (registers the embedded dataset)
    import instseg.modeling  # noqa: F401  (registers FCOS, its backbones, the shared RoI heads)
    import refinemask

    cfg = get_cfg()
    add_instseg_config(cfg)
    blendmask.add_blendmask_config(cfg)
    centermask.add_centermask_config(cfg)
    refinemask.add_refinemask_config(cfg)
    return cfg


# what a config is built for -> the datasets whose registration and classes it checks
TASKS = ("train", "eval", "predict")


def build_config(config_file: str = "", opts=(), task: str = "train") -> CfgNode:
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


def _all_keys(node: CfgNode, prefix: str = ""):
    for name, value in node.items():
        if isinstance(value, CfgNode):
            yield from _all_keys(value, f"{prefix}{name}.")
        else:
            yield prefix + name


# keys of the upstream projects that this project sets in one place instead
REPLACED_KEYS = {
    "MODEL.FCOS.NUM_CLASSES": "MODEL.ROI_HEADS.NUM_CLASSES",
    "MODEL.BASIS_MODULE.NUM_CLASSES": "MODEL.ROI_HEADS.NUM_CLASSES",
}


def _merge(cfg: CfgNode, merge, source, where: str) -> None:
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


def _unknown_key_message(cfg: CfgNode, error: str, where: str) -> str:
    """yacs's 'Non-existent (config) key: X' with where it came from and the closest known keys."""
    key = error.rsplit(":", 1)[-1].strip()
    where = f" (in {where})"
    if key in REPLACED_KEYS:
        return f"unknown config key {key}{where}: the number of classes of every model is set once, in {REPLACED_KEYS[key]}"
    close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.8)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config key {key}{where}{hint}"


def to_memory_format(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """`model`, in place, in channels-last memory format when cfg.MODEL.CHANNELS_LAST: its 4-D
    weights, and so its conv outputs (PyTorch's convs follow the weights' format, whatever the input's)."""
    if cfg.MODEL.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    return model


def evaluation_dir(output_dir: str, dataset_name: str) -> str:
    """Where Trainer.test writes the predictions and results of a dataset (detectron2's layout)."""
    return os.path.join(output_dir, "inference", dataset_name)


@contextlib.contextmanager
def mixed_precision(device: str, dtype: str):
    """torch.autocast on `device`'s type in `dtype` ("bfloat16", "float16"); nothing for ""."""
    with torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype) if dtype else None, enabled=bool(dtype)):
        yield


def _half_to_float32(value):
    if isinstance(value, Boxes):
        return Boxes(_half_to_float32(value.tensor))
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def outputs_in_float32(outputs):
    """A model's outputs (a dict, or a list of dicts, of Instances and tensors) with half-precision
    tensors in float32: under autocast the scores come out in its dtype, which numpy cannot take."""
    if isinstance(outputs, list):
        return [outputs_in_float32(o) for o in outputs]
    converted = {}
    for key, value in outputs.items():
        if isinstance(value, Instances):
            value = Instances(value.image_size, **{k: _half_to_float32(v) for k, v in value.get_fields().items()})
        converted[key] = _half_to_float32(value)
    return converted


class MixedPrecisionInference(nn.Module):
    """Wraps a model so that its inference runs as cfg.TEST.AUTOCAST says, outputs in float32."""

    def __init__(self, model: nn.Module, cfg: CfgNode):
        super().__init__()
        self.model = model
        self.device = cfg.MODEL.DEVICE
        self.dtype = cfg.TEST.AUTOCAST
        self.train(model.training)  # evaluation restores the mode it finds on the wrapper

    def forward(self, batched_inputs):
        with mixed_precision(self.device, self.dtype):
            return outputs_in_float32(self.model(batched_inputs))


class CPUMixedPrecisionTrainer(SimpleTrainer):
    """detectron2's training step with the forward pass (model and losses) under CPU bfloat16
    autocast. detectron2's AMPTrainer needs CUDA (float16 with loss scaling); bfloat16 has float32's
    exponent range, so its losses need no scaling. SimpleTrainer.run_step is written out again rather
    than wrapped, because wrapping it would run the backward pass under autocast too, which PyTorch
    advises against."""

    def run_step(self):
        assert self.model.training, "CPUMixedPrecisionTrainer: the model was put in eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


class KeepingCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpoint hook that keeps only the last `max_to_keep` periodic
    checkpoints of its run (0: all) and, when the last iteration is also a periodic one, saves
    model_final.pth as a second name of that checkpoint (Checkpointer.save_as_link), not a copy.

    After --resume, the periodic checkpoints before the iteration training continues from count as
    this run's; a run started afresh in a folder of older checkpoints leaves those alone."""

    def __init__(self, checkpointer: Checkpointer, period: int, max_to_keep: int):
        super().__init__(checkpointer, period)
        self.keep = max_to_keep

    def _periodic_checkpoints(self):
        """(iteration, path) of the periodic checkpoint files in the checkpointer's folder."""
        pattern = re.compile(rf"{re.escape(self.file_prefix)}_(\d{{7}})\.pth")
        folder = self.checkpointer.save_dir
        found = [(pattern.fullmatch(f), f) for f in (os.listdir(folder) if os.path.isdir(folder) else [])]
        return sorted((int(m.group(1)), os.path.join(folder, f)) for m, f in found if m)

    def before_train(self):
        super().before_train()
        self.recent_checkpoints = [p for it, p in self._periodic_checkpoints() if it < self.trainer.start_iter]

    def step(self, iteration: int, **kwargs) -> None:
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        periodic = f"{self.file_prefix}_{iteration:07d}"
        is_periodic = (iteration + 1) % self.period == 0
        if is_periodic:
            self.checkpointer.save(periodic, **state)
            self.recent_checkpoints.append(os.path.join(self.checkpointer.save_dir, f"{periodic}.pth"))
            while self.keep > 0 and len(self.recent_checkpoints) > self.keep:
                oldest = self.recent_checkpoints.pop(0)
                if self.checkpointer.save_to_disk and os.path.exists(oldest):
                    os.remove(oldest)
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            if is_periodic:
                self.checkpointer.save_as_link(f"{periodic}.pth", f"{self.file_prefix}_final")
            else:
                self.checkpointer.save(f"{self.file_prefix}_final", **state)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with this project's checkpointer (safe loading, atomic saving,
    the training data's class names in every checkpoint, the last SOLVER.CHECKPOINTS_TO_KEEP kept),
    dataset mapper (clear errors on bad images) and evaluator (box, mask and Boundary AP, with or
    without detectron2's compiled ops); SOLVER.AMP.ENABLED also works on a CPU (bfloat16). A
    schedule that does not fit in SOLVER.MAX_ITER is an error (check_schedule); metrics.json is
    valid JSON."""

    def __init__(self, cfg: CfgNode):
        check_schedule(cfg)  # before anything is built: a schedule that cannot train is an error
        cpu_amp = cfg.SOLVER.AMP.ENABLED and torch.device(cfg.MODEL.DEVICE).type == "cpu"
        if not cpu_amp:
            super().__init__(cfg)
            return
        # DefaultTrainer would build its CUDA-only AMPTrainer (and warn that it disables loss
        # scaling): build its SimpleTrainer, then hand its iterator to our step. Not a second one
        # over the loader: with DATALOADER.NUM_WORKERS 0 it would share the first one's
        # aspect-ratio buckets and never yield.
        without_amp = cfg.clone()
        without_amp.defrost()
        without_amp.SOLVER.AMP.ENABLED = False
        super().__init__(without_amp)
        self.cfg = cfg
        self._trainer = CPUMixedPrecisionTrainer(self.model, self._trainer._data_loader_iter, self.optimizer)

    @classmethod
    def build_model(cls, cfg):
        return to_memory_format(super().build_model(cfg), cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before asking for the hooks; the
        # checkpoint hook and resume_or_load must use ours.
        self.checkpointer = Checkpointer(
            self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self), metadata=TrainingMetadata(self.cfg.DATASETS.TRAIN)
        )
        keeper = KeepingCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD, self.cfg.SOLVER.CHECKPOINTS_TO_KEEP)
        return [keeper if isinstance(h, hooks.PeriodicCheckpointer) else h for h in super().build_hooks()]

    def build_writers(self):
        """detectron2's default writers, with metrics.json as valid JSON (NaN written as null)."""
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    def train(self):
        try:
            results = super().train()
        except FloatingPointError:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            logger.error(
                "training stopped: the loss is not finite (see the error below); the optimizer did not "
                "step on it. Last checkpoint: %s. Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS, "
                "then continue with --resume.",
                last or "none yet",
            )
            raise
        if comm.get_world_size() > 1:
            check_replicas_identical(self.model)
            logger.info("model weights are identical on all %d processes", comm.get_world_size())
        return results

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, in mixed precision when cfg.TEST.AUTOCAST names a dtype."""
        if cfg.TEST.AUTOCAST:
            model = MixedPrecisionInference(model, cfg)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = evaluation_dir(cfg.OUTPUT_DIR, dataset_name)
        return BoundaryCOCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            use_fast_impl=detectron2_has_compiled_ops(),
            # COCO's maxDets follows the one bound of every method's detections
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        dataset = load_train_dicts(cfg)
        check_num_classes(cfg)  # the datasets' metadata is complete once they are loaded
        return build_detection_train_loader(cfg, mapper=InstSegDatasetMapper(cfg, True), dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=InstSegDatasetMapper(cfg, False))


def prediction_metadata(cfg: CfgNode, saved: Optional[dict]) -> Metadata:
    """What names the predicted classes: the "metadata" a training checkpoint holds (`saved`), else
    that of the registered dataset DATASETS.TEST[0] when it has MODEL.ROI_HEADS.NUM_CLASSES classes,
    else nothing (pictures then show class indices)."""
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if saved and len(saved.get("thing_classes", ())) == num_classes:
        return Metadata(name=f"checkpoint {cfg.MODEL.WEIGHTS}", **saved)
    for name in cfg.DATASETS.TEST[:1]:
        if name in DatasetCatalog and len(MetadataCatalog.get(name).get("thing_classes", ())) == num_classes:
            return MetadataCatalog.get(name)
    logger.warning(
        "no class names: MODEL.WEIGHTS is not a checkpoint written by this project's training and "
        "DATASETS.TEST names no registered dataset of %d classes; predictions are labelled by class index",
        num_classes,
    )
    return Metadata(name="no class names")


class Predictor(DefaultPredictor):
    """detectron2's DefaultPredictor, loading cfg.MODEL.WEIGHTS with this project's Checkpointer, so
    that a .pkl file cannot run code (detectron2's own unpickles it unrestricted), and only when it
    gives every weight of the model (else an IncompleteWeightsError, see load_inference_weights);
    predicting in mixed precision when cfg.TEST.AUTOCAST names a dtype and channels-last with
    MODEL.CHANNELS_LAST. `metadata` names the classes (prediction_metadata): those of the
    checkpoint's training data, without registering the dataset."""

    def __init__(self, cfg: CfgNode):
        weights_free = cfg.clone()
        weights_free.defrost()
        weights_free.MODEL.WEIGHTS = ""
        super().__init__(weights_free)
        self.cfg = cfg.clone()
        to_memory_format(self.model, cfg)
        saved = load_inference_weights(self.model, cfg).get("metadata")
        self.metadata = prediction_metadata(cfg, saved)

    def __call__(self, original_image: np.ndarray) -> dict:
        """original_image: an H x W x 3 array in cfg.INPUT.FORMAT channel order (cv2.imread's BGR by
        default). Raises a ValueError saying what was expected, instead of numpy's or PIL's error
        from deep inside the resize."""
        image = original_image
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
            got = type(image).__name__ + (f" of shape {tuple(image.shape)}" if hasattr(image, "shape") else "")
            raise ValueError(f"Predictor expects an H x W x 3 numpy array in {self.input_format} order, got {got}")
        resize = self.aug.get_transform(image)
        if min(resize.new_h, resize.new_w) < 1:
            height, width = image.shape[:2]
            raise ValueError(f"cannot resize a {width}x{height} image with {self.aug}: a side would be 0 pixels")
        with mixed_precision(self.cfg.MODEL.DEVICE, self.cfg.TEST.AUTOCAST):
            return outputs_in_float32(super().__call__(image))
