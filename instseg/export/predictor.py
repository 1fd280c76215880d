"""Predictors running an exported model with instseg.engine.Predictor's interface:
``__call__(image HxWx3 in cfg.INPUT.FORMAT order) -> {"instances": Instances}`` at the image's size.

They pre-process as detectron2's DefaultPredictor (the RGB flip where cfg.INPUT.FORMAT says, the
ResizeShortestEdge of INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, a float32 CHW tensor) and post-process as
GeneralizedRCNN (detector_postprocess: boxes rescaled to the original size and clipped, the mask
probabilities pasted into full-size masks at threshold 0.5).
"""
import json
import os
from typing import Dict

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..engine.predictor import prediction_metadata
from .exporter import METADATA_KEY, MIN_SIDE_KEY, OUTPUT_NAMES_KEY

DEFAULT_OUTPUT_NAMES = ["boxes", "scores", "classes", "mask_probs"]
# output name of an export module -> Instances field
FIELDS = {"boxes": "pred_boxes", "scores": "scores", "classes": "pred_classes", "mask_probs": "pred_masks",
          "mask_scores": "mask_scores"}


class ExportedPredictor:
    """The shared pre- and post-processing; subclasses run the model (`run`)."""

    def __init__(self, cfg, path: str, saved_metadata: dict = None):
        """`saved_metadata`: the checkpoint's "metadata" the file keeps (class names), else None."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"exported model {path!r} does not exist")
        self.cfg = cfg.clone()
        self.path = path
        self.input_format = cfg.INPUT.FORMAT
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.metadata = prediction_metadata(cfg, saved_metadata)

    def run(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, original_image: np.ndarray) -> dict:
        image = original_image
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
            got = type(image).__name__ + (f" of shape {tuple(image.shape)}" if hasattr(image, "shape") else "")
            raise ValueError(f"{type(self).__name__} expects an H x W x 3 numpy array in {self.input_format} order, got {got}")
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resize = self.aug.get_transform(image)
        if min(resize.new_h, resize.new_w) < 1:
            raise ValueError(f"cannot resize a {width}x{height} image with {self.aug}: a side would be 0 pixels")
        resized = resize.apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.astype("float32").transpose(2, 0, 1)))
        return {"instances": self.postprocess(self.run(tensor), tuple(tensor.shape[-2:]), height, width)}

    @staticmethod
    def postprocess(outputs: Dict[str, torch.Tensor], image_size, height: int, width: int) -> Instances:
        instances = Instances(image_size)
        for name, value in outputs.items():
            value = torch.as_tensor(value)
            instances.set(FIELDS[name], Boxes(value) if name == "boxes" else value)
        return detector_postprocess(instances, height, width)


class OnnxPredictor(ExportedPredictor):
    """Runs a .onnx file written by projects/export.py in ONNX Runtime: the CUDA provider where
    onnxruntime has it (onnxruntime-gpu), else the CPU provider (`providers` overrides)."""

    def __init__(self, cfg, path: str, providers=None):
        import onnx
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"exported model {path!r} does not exist")
        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        super().__init__(cfg, path, json.loads(props.get(METADATA_KEY, "{}")) or None)

        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name

    def run(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        values = self.session.run(self.output_names, {self.input_name: image.numpy()})
        return {name: torch.from_numpy(v) for name, v in zip(self.output_names, values)}


class TorchModulePredictor(ExportedPredictor):
    """Runs a torch module loaded from an exported file (`load`: the module and the file's extra
    files), on the CPU."""

    def __init__(self, cfg, path: str):
        import instseg.layers  # noqa: F401  (the file may call this project's ops)
        import instseg.export.nms  # noqa: F401  (and instseg_export::nms)

        if not os.path.isfile(path):
            raise FileNotFoundError(f"exported model {path!r} does not exist")
        extra_files = {OUTPUT_NAMES_KEY: "", METADATA_KEY: "", MIN_SIDE_KEY: ""}
        self.module = self.load(path, extra_files)
        super().__init__(cfg, path, json.loads(extra_files[METADATA_KEY] or "{}") or None)
        self.output_names = json.loads(extra_files[OUTPUT_NAMES_KEY] or "null") or DEFAULT_OUTPUT_NAMES
        self.min_side = int(extra_files[MIN_SIDE_KEY] or 1)

    @staticmethod
    def load(path: str, extra_files: dict):
        raise NotImplementedError

    def run(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        if min(image.shape[-2:]) < self.min_side:
            raise ValueError(
                f"{self.path} takes images of at least {self.min_side} px a side; the resized image is "
                f"{image.shape[-1]}x{image.shape[-2]} (INPUT.MIN_SIZE_TEST {self.cfg.INPUT.MIN_SIZE_TEST}, "
                f"MAX_SIZE_TEST {self.cfg.INPUT.MAX_SIZE_TEST}); the onnx and torchscript formats take any size"
            )
        with torch.no_grad():
            values = self.module(image)
        return dict(zip(self.output_names, values))


class ProgramPredictor(TorchModulePredictor):
    """Runs a .pt2 ExportedProgram written by projects/export.py (torch.export.load)."""

    @staticmethod
    def load(path, extra_files):
        return torch.export.load(path, extra_files=extra_files).module()


class TorchScriptPredictor(TorchModulePredictor):
    """Runs a .ts TorchScript trace written by projects/export.py (torch.jit.load)."""

    @staticmethod
    def load(path, extra_files):
        return torch.jit.load(path, map_location="cpu", _extra_files=extra_files)


# projects/export.py --format -> the predictor that runs its files
PREDICTORS = {"onnx": OnnxPredictor, "torchscript": TorchScriptPredictor, "exported-program": ProgramPredictor}
