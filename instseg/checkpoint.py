"""Checkpoints that are safe to load and to be interrupted while saving.

- Loading never runs code from the file: ``.pth`` files load with ``torch.load(weights_only=True)``
  and Detectron2 model-zoo ``.pkl`` files (pickled dicts of numpy arrays) through an unpickler that
  only knows the few numpy types such files contain.
- Saving writes to a temporary file and renames it into place, so a process killed mid-save never
  leaves a half-written checkpoint (or a ``last_checkpoint`` naming one) for ``--resume``.
- A checkpoint of the same state as one already saved (``model_final.pth`` after a periodic
  checkpoint of the last iteration) is a second name of that file, not a second copy.
- Training saves the class names of its data with every checkpoint ("metadata"); evaluation and
  prediction load a checkpoint only when it gives every weight of the model
  (``load_inference_weights``), fine-tuning loads what fits and logs the rest.
"""
import logging
import os
import pickle
import shutil
from typing import Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager
from torch import nn

from .detectron2_compat import missing_keys_not_reused

logger = logging.getLogger(__name__)

# What a Detectron2/Caffe2 model-zoo pickle needs besides plain containers and strings.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint refers to something other than arrays, tensors and plain containers."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")  # model-zoo files were written by Python 2
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to load {self.source}: it refers to {module}.{name}, but a model-zoo .pkl "
            f"checkpoint holds only numpy arrays in dicts (allowed: "
            f"{', '.join(sorted(f'{m}.{n}' for m, n in _NUMPY_GLOBALS))})"
        )


def load_numpy_pickle(filename: str):
    """Unpickle a model-zoo ``.pkl`` file, allowing only numpy arrays inside plain containers."""
    with PathManager.open(filename, "rb") as f:
        return _NumpyOnlyUnpickler(f, filename).load()


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with safe loading and atomic saving (see module doc).
    After a load, `incompatible_keys` holds what the checkpoint and the model did not share."""

    incompatible_keys = None

    def _load_model(self, checkpoint):
        self.incompatible_keys = super()._load_model(checkpoint)
        return self.incompatible_keys

    def _load_file(self, filename: str):
        if filename.endswith(".pkl"):
            data = load_numpy_pickle(filename)
            if "model" in data and "__author__" in data:  # detectron2 model-zoo layout
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            blobs = data.get("blobs", data)  # Caffe2/Detectron1 layout
            model = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls; detectron2 converts it (torch.load is weights-only since torch 2.6)
            return super()._load_file(filename)
        with PathManager.open(filename, "rb") as f:
            try:
                loaded = torch.load(f, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                raise UnsafeCheckpointError(
                    f"refusing to load {filename}: it holds objects other than tensors and plain "
                    f"containers, which could run code when unpickled ({e})"
                ) from e
        return loaded if "model" in loaded else {"model": loaded}

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        _atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def save_as_link(self, existing: str, name: str) -> None:
        """Save checkpoint `name` as a second name (a hard link) of the checkpoint file `existing`
        (a basename in save_dir) and tag it as the last checkpoint. Where the file system has no
        hard links the file is copied. Each name can be deleted without touching the other."""
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        tmp = f"{path}.tmp"
        if os.path.lexists(tmp):  # left by a process killed here
            os.remove(tmp)
        self.logger.info(f"Saving checkpoint to {path} (a link to {existing}: the same state)")
        try:
            os.link(os.path.join(self.save_dir, existing), tmp)
        except OSError:
            shutil.copyfile(os.path.join(self.save_dir, existing), tmp)
        os.replace(tmp, path)
        if os.path.lexists(tmp):  # rename() does nothing when both names were already one file
            os.remove(tmp)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


class TrainingMetadata:
    """The class names and dataset category ids of the training data, saved by the trainer's
    Checkpointer under "metadata" in every checkpoint (a checkpointable), so that Predictor,
    demo.py and their results json name the classes without the dataset being registered."""

    KEYS = ("thing_classes", "thing_dataset_id_to_contiguous_id")

    def __init__(self, dataset_names: Sequence[str]):
        self.dataset_names = list(dataset_names)

    def state_dict(self) -> dict:
        if not self.dataset_names:
            return {}
        metadata = MetadataCatalog.get(self.dataset_names[0])  # detectron2 checks the others agree
        return {key: metadata.get(key) for key in self.KEYS if metadata.get(key) is not None}

    def load_state_dict(self, state: dict) -> None:
        pass  # resuming: the checkpoints go on holding the names of the data trained on now


class IncompleteWeightsError(ValueError):
    """Evaluation or prediction would run a model some of whose weights were not loaded."""


def _run_config(path: str) -> Optional[str]:
    saved = os.path.join(os.path.dirname(path), "config.yaml")
    return saved if os.path.isfile(saved) else None


def _what_does_not_fit(path: str, missing, shapes, metadata: dict, num_classes: int) -> str:
    parts = []
    if shapes:
        listed = "; ".join(f"{k}: {tuple(c)} in the checkpoint, {tuple(m)} in the model" for k, c, m in shapes[:3])
        parts.append(f"{len(shapes)} of another shape: {listed}{'; ...' if len(shapes) > 3 else ''}")
    if missing:
        listed = ", ".join(sorted(missing)[:3])
        parts.append(f"{len(missing)} missing from the checkpoint: {listed}{', ...' if len(missing) > 3 else ''}")
    message = (
        f"checkpoint {path} does not fit the model: {len(shapes) + len(missing)} of the model's "
        f"parameters would keep their random initialisation ({'; and '.join(parts)})"
    )
    classes = (metadata or {}).get("thing_classes")
    if classes is not None and len(classes) != num_classes:
        message += (
            f". It was trained on {len(classes)} classes {classes}, the config has "
            f"MODEL.ROI_HEADS.NUM_CLASSES {num_classes}: set MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}"
        )
    elif shapes:
        message += ". Another MODEL.ROI_HEADS.NUM_CLASSES than the checkpoint's changes the classifiers' shapes"
    return message


def _how_to_fit(path: str) -> str:
    saved = _run_config(path)
    config = f"use the config its run saved, --config-file {saved}" if saved else "use the config it was trained with"
    return f"To evaluate or predict with it, {config}; TEST.ALLOW_RANDOM_WEIGHTS True runs the partly random model anyway"


def load_inference_weights(model: nn.Module, cfg, path: Optional[str] = None) -> dict:
    """Load checkpoint `path` (default cfg.MODEL.WEIGHTS) into `model` for evaluation or prediction.

    Raises IncompleteWeightsError when `path` is empty, or when the checkpoint leaves parameters of
    the model unloaded (missing from it, or of another shape: another number of classes), unless
    cfg.TEST.ALLOW_RANDOM_WEIGHTS; then it logs a warning. Parameters of the checkpoint that the
    model lacks are logged only. Returns the checkpoint's other entries (e.g. "metadata")."""
    path = cfg.MODEL.WEIGHTS if path is None else path
    allowed = cfg.TEST.ALLOW_RANDOM_WEIGHTS
    if not path:
        if not allowed:
            raise IncompleteWeightsError(
                "MODEL.WEIGHTS is empty: evaluation and prediction would run a randomly initialised "
                "model. Set MODEL.WEIGHTS to a checkpoint (a training run's OUTPUT_DIR/model_final.pth), "
                "or TEST.ALLOW_RANDOM_WEIGHTS True to run the random model anyway"
            )
        logger.warning("MODEL.WEIGHTS is empty: running a randomly initialised model (TEST.ALLOW_RANDOM_WEIGHTS)")
        return {}
    checkpointer = Checkpointer(model)
    extra = checkpointer.load(path)
    incompatible = checkpointer.incompatible_keys
    shapes = incompatible.incorrect_shapes if incompatible else []
    reshaped = {key for key, _, _ in shapes}  # fvcore drops them from the checkpoint: "missing" too
    missing = [k for k in missing_keys_not_reused(model, incompatible.missing_keys) if k not in reshaped] if incompatible else []
    if missing or shapes:
        problem = _what_does_not_fit(path, missing, shapes, extra.get("metadata"), cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        if not allowed:
            raise IncompleteWeightsError(f"{problem}. {_how_to_fit(path)}")
        logger.warning(f"{problem} (TEST.ALLOW_RANDOM_WEIGHTS)")
    return extra
