"""Prediction on single images with a trained model (projects/demo.py, the README's Python use)."""
import logging
from typing import Optional

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor

from ..checkpoint import load_inference_weights
from .memory_format import to_memory_format
from .mixed_precision import mixed_precision, outputs_in_float32

logger = logging.getLogger(__name__)


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
