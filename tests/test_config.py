"""Config building: clear errors naming the key, file or dataset at fault."""
import pytest

from instseg.data.datasets import register_coco_datasets
from instseg.engine import build_config

SHAPES = "configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml"


def test_shapes_config_builds_and_defaults_to_available_device():
    import torch

    cfg = build_config(SHAPES)
    assert cfg.MODEL.ROI_ALIGN_IMPL == "instseg"
    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")
    assert cfg.MODEL.ROI_HEADS.NAME == "InstSegROIHeads"


def test_num_classes_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES is 5 but dataset 'shapes_train' has 3"):
        build_config(SHAPES, ["MODEL.ROI_HEADS.NUM_CLASSES", "5"])


def test_unknown_roi_align_impl():
    with pytest.raises(ValueError, match="MODEL.ROI_ALIGN_IMPL must be one of"):
        build_config(SHAPES, ["MODEL.ROI_ALIGN_IMPL", "fast"])


def test_config_key_typo_names_the_key():
    with pytest.raises(KeyError, match="unknown config key MODEL.ROI_HEADS.NUM_CLASES.*did you mean MODEL.ROI_HEADS.NUM_CLASSES"):
        build_config(SHAPES, ["MODEL.ROI_HEADS.NUM_CLASES", "3"])


def test_upstream_num_classes_keys_point_to_the_one_key():
    with pytest.raises(KeyError, match="MODEL.FCOS.NUM_CLASSES.*set once, in MODEL.ROI_HEADS.NUM_CLASSES"):
        build_config(SHAPES, ["MODEL.FCOS.NUM_CLASSES", "3"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        build_config("configs/no_such.yaml")


def test_register_coco_checks_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset 'mine': annotation json"):
        register_coco_datasets([("mine", str(tmp_path / "missing.json"), str(tmp_path))])
