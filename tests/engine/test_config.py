"""Config building: every config builds its model; clear errors naming the key, file or dataset at fault."""
import glob
import os

import pytest
from detectron2.modeling import build_model

from instseg.config import check_schedule
from instseg.data.datasets import register_coco_datasets
from instseg.engine import build_config

SHAPES = "configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml"
MODEL_ZOO = sorted(c for c in glob.glob("configs/*/*.yaml") if not os.path.basename(c).startswith("Base-"))


@pytest.mark.parametrize("config", MODEL_ZOO, ids=lambda c: os.path.basename(c))
def test_every_config_builds_its_model(config):
    cfg = build_config(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert sum(p.numel() for p in model.parameters()) > 1e6


def test_every_method_has_model_zoo_configs():
    assert {os.path.basename(os.path.dirname(c)) for c in MODEL_ZOO} == {"BlendMask", "CenterMask", "MaskRCNN", "RefineMask"}
    assert len(MODEL_ZOO) >= 27


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


def test_unknown_autocast_dtype():
    with pytest.raises(ValueError, match="TEST.AUTOCAST must be one of .*got 'fp16'"):
        build_config(SHAPES, ["TEST.AUTOCAST", "fp16"])


def test_config_key_typo_names_the_key():
    with pytest.raises(KeyError, match="unknown config key MODEL.ROI_HEADS.NUM_CLASES.*did you mean MODEL.ROI_HEADS.NUM_CLASSES"):
        build_config(SHAPES, ["MODEL.ROI_HEADS.NUM_CLASES", "3"])


def test_upstream_num_classes_keys_point_to_the_one_key():
    with pytest.raises(KeyError, match="MODEL.FCOS.NUM_CLASSES.*set once, in MODEL.ROI_HEADS.NUM_CLASSES"):
        build_config(SHAPES, ["MODEL.FCOS.NUM_CLASSES", "3"])


def test_unknown_key_in_a_config_file_names_the_file(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(f"_BASE_: {os.path.abspath(SHAPES)}\nSOLVER:\n  MAX_ITERS: 10\n")
    with pytest.raises(KeyError, match=rf"unknown config key SOLVER.MAX_ITERS \(in config file {config}\); did you mean SOLVER.MAX_ITER"):
        build_config(str(config))


def test_option_without_value_is_not_called_an_unknown_key():
    with pytest.raises(ValueError, match=r"command-line options: options must be KEY VALUE pairs.*'MODEL.WEIGHTS'"):
        build_config(SHAPES, ["MODEL.WEIGHTS"])


@pytest.mark.parametrize(
    "config, key, value, message",
    [
        ("BlendMask/R_18_shapes", "MODEL.BASIS_MODULE.IN_FEATURES", "['p2', 'p4']", r"MODEL.BASIS_MODULE.IN_FEATURES \['p2'\] are not backbone outputs \['p3'"),
        ("BlendMask/R_18_shapes", "MODEL.FCOS.IN_FEATURES", "['p3', 'p9']", r"MODEL.FCOS.IN_FEATURES \['p9'\] are not backbone outputs"),
        ("BlendMask/R_18_shapes", "MODEL.BLENDMASK.POOLER_SCALES", "(0.125,)", r"MODEL.BLENDMASK.POOLER_SCALES must be \(0.25,\)"),
        ("BlendMask/R_18_shapes", "MODEL.BLENDMASK.TOP_INTERP", "bicubic", "MODEL.BLENDMASK.TOP_INTERP must be one of"),
        ("RefineMask/refinemask_R_18_FPN_shapes", "MODEL.REFINEMASK.SEMANTIC_IN_FEATURE", "p9", r"MODEL.REFINEMASK.SEMANTIC_IN_FEATURE \['p9'\] are not backbone outputs"),
        ("RefineMask/refinemask_R_18_FPN_shapes", "MODEL.REFINEMASK.STAGE_SIZES", "[28, 56, 112, 224]", "STAGE_SIZES starts at 28 but the RoI features are 14 x 14 .MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION"),
        ("CenterMask/centermask_lite_V_19_eSE_shapes", "MODEL.ROI_MASK_HEAD.ASSIGN_CRITERION", "size", r"MODEL.ROI_MASK_HEAD.ASSIGN_CRITERION.*must be one of"),
    ],
    ids=lambda v: v.rsplit(".", 1)[-1] if isinstance(v, str) and v.startswith("MODEL.") else None,
)
def test_config_values_that_do_not_fit_the_model_are_named(config, key, value, message):
    with pytest.raises(ValueError, match=message):
        build_model(build_config(f"configs/{config}.yaml", [key, value, "MODEL.DEVICE", "cpu"]))


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        build_config("configs/no_such.yaml")


def test_register_coco_checks_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset 'mine': annotation json"):
        register_coco_datasets([("mine", str(tmp_path / "missing.json"), str(tmp_path))])


@pytest.mark.parametrize("config", MODEL_ZOO, ids=lambda c: os.path.basename(c))
def test_every_shipped_schedule_fits_in_its_max_iter(config):
    check_schedule(build_config(config, ["MODEL.WEIGHTS", ""]))


@pytest.mark.parametrize("config", ["BlendMask/R_18_shapes", "CenterMask/centermask_lite_V_19_eSE_shapes"])
def test_short_run_with_the_configs_warm_up_is_an_error_before_anything_is_built(config, monkeypatch):
    from instseg.engine import Trainer

    # the case: 150 warm-up iterations, MAX_ITER 100, would never leave ~1e-4
    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, cfg: pytest.fail("model built")))
    cfg = build_config(f"configs/{config}.yaml", ["SOLVER.MAX_ITER", "100", "MODEL.DEVICE", "cpu"])
    message = r"SOLVER.WARMUP_ITERS 150 is not below SOLVER.MAX_ITER 100.*set SOLVER.WARMUP_ITERS"
    with pytest.raises(ValueError, match=message + r".*SOLVER.STEPS \(320, 380\) has \(320, 380\) at or beyond"):
        Trainer(cfg)


def test_step_at_max_iter_is_an_error_and_a_fitting_schedule_is_not():
    with pytest.raises(ValueError, match=r"SOLVER.STEPS \(3, 4\) has \(4,\) at or beyond SOLVER.MAX_ITER 4.*\"\(3,\)\" to drop"):
        check_schedule(build_config(SHAPES, ["SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3, 4)", "SOLVER.WARMUP_ITERS", "1"]))
    with pytest.raises(ValueError, match="SOLVER.WARMUP_ITERS 4 is not below SOLVER.MAX_ITER 4"):
        check_schedule(build_config(SHAPES, ["SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.WARMUP_ITERS", "4"]))
    check_schedule(build_config(SHAPES, ["SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "(80, 95)", "SOLVER.WARMUP_ITERS", "30"]))
