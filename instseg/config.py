"""Config keys shared by every method of this project, and checks of a finished config."""
import torch
from detectron2.config import CfgNode as CN
from detectron2.data import MetadataCatalog

ROI_ALIGN_IMPLS = ("instseg", "detectron2")


def add_instseg_config(cfg: CN) -> None:
    """Add the shared keys to `cfg` (a detectron2 config from ``get_cfg()``), in place."""
    # Which RoIAlign the RoI poolers run: "instseg" = this project's op (csrc/roi_align),
    # "detectron2" = detectron2.layers.ROIAlign (torchvision's op).
    cfg.MODEL.ROI_ALIGN_IMPL = "instseg"
    # detectron2 defaults to "cuda"; fall back to the CPU on machines without a GPU.
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def check_config(cfg: CN) -> None:
    """Raise a ValueError naming the key when a finished config is inconsistent."""
    if cfg.MODEL.ROI_ALIGN_IMPL not in ROI_ALIGN_IMPLS:
        raise ValueError(
            f"MODEL.ROI_ALIGN_IMPL must be one of {ROI_ALIGN_IMPLS}, got {cfg.MODEL.ROI_ALIGN_IMPL!r}"
        )
    check_num_classes(cfg)


def check_num_classes(cfg: CN) -> None:
    """The number of classes is set once, in MODEL.ROI_HEADS.NUM_CLASSES; it must match every
    dataset of the config whose classes are known (a COCO json's become known once it is loaded)."""
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but dataset "
                f"{name!r} has {len(classes)} classes {classes}: set MODEL.ROI_HEADS.NUM_CLASSES "
                f"{len(classes)}"
            )
