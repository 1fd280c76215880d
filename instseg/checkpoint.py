"""Checkpoints that are safe to load and to be interrupted while saving.

- Loading never runs code from the file: ``.pth`` files load with ``torch.load(weights_only=True)``
  and Detectron2 model-zoo ``.pkl`` files (pickled dicts of numpy arrays) through an unpickler that
  only knows the few numpy types such files contain.
- Saving writes to a temporary file and renames it into place, so a process killed mid-save never
  leaves a half-written checkpoint (or a ``last_checkpoint`` naming one) for ``--resume``.
- A checkpoint of the same state as one already saved (``model_final.pth`` after a periodic
  checkpoint of the last iteration) is a second name of that file, not a second copy.
"""
import os
import pickle
import shutil

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

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
    """detectron2's DetectionCheckpointer with safe loading and atomic saving (see module doc)."""

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
