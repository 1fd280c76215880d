"""Every exportable method end to end (instseg.export): ONNX run by ONNX Runtime and the
torch.export ExportedProgram give the eager model's detections on two image sizes (a randomly
initialised model keeping every detection)."""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from helpers import CONFIGS, RANDOM_WEIGHTS, ZERO_THRESHOLDS
from instseg.engine import Predictor, build_config
from instseg.export import (
    OnnxPredictor, ProgramPredictor, UnsupportedExportError, build_export_module, example_image, export,
)

# each test exports models (tens of seconds each): the slow tier
pytestmark = pytest.mark.slow

MASK_RCNN, CENTERMASK, BLENDMASK, REFINEMASK = CONFIGS
REFINEMASK_FASTER_BETTER = "configs/RefineMask/refinemask_faster_better_R_18_FPN_shapes.yaml"
EXPORTED = [MASK_RCNN, CENTERMASK, REFINEMASK, REFINEMASK_FASTER_BETTER, BLENDMASK]
# every detection kept (a random model's scores are near their prior); images kept at their size,
# which is above FCOS's 129 px minimum (instseg.export.exporter.min_side)
OPTS = ["MODEL.DEVICE", "cpu", *ZERO_THRESHOLDS, *RANDOM_WEIGHTS,
        "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "192"]
SIZES = [(160, 192), (192, 160)]
CLASS_NAMES = ["a", "b", "c"]  # the files keep a checkpoint's class names


def decisive_mask_logits(model, scale=300.0):
    """Scale the last layer of the mask head: a random model's mask logits are then far from 0 in
    both directions, so that the pasted masks (at probability 0.5) have shapes, not noise or nothing."""
    with torch.no_grad():
        if not hasattr(model, "roi_heads"):  # BlendMask: its masks blend the bases
            last = [m for m in model.basis_module.tower.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            last.weight.mul_(scale / 10)
            return
        for name, layer in model.roi_heads.mask_head.named_modules():
            if name == "predictor" or name.endswith("instance_logits"):  # RefineMask: every stage's
                layer.weight.mul_(scale)


def exported_setup(tmp_path_factory, config, opts, seed=0, adjust=decisive_mask_logits):
    """A randomly initialised model (seed `seed`, then `adjust`ed) saved as a checkpoint, its
    config, the model, and it exported to ONNX and to an ExportedProgram (at SIZES[0])."""
    root = tmp_path_factory.mktemp("export")
    cfg = build_config(config, opts, task="predict")
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    adjust(model)
    weights = str(root / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    cfg = build_config(config, opts + ["MODEL.WEIGHTS", weights], task="predict")
    module = build_export_module(model)
    paths = {"onnx": str(root / "model.onnx"), "exported-program": str(root / "model.pt2")}
    with torch.no_grad():
        for fmt, path in paths.items():
            export(module, fmt, path, example_image(*SIZES[0]), metadata={"thing_classes": CLASS_NAMES})
    return cfg, paths, model


def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def mask_ious(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    inter, union = (a & b).sum(1).float(), (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def assert_same_detections(got, expected):
    assert len(got) == len(expected) > 0
    assert torch.equal(got.pred_classes.long(), expected.pred_classes.long())
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-2, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=0)
    assert expected.pred_masks.flatten(1).any(1).sum() >= 3  # masks to compare, not only empty ones
    ious = mask_ious(got.pred_masks, expected.pred_masks)
    assert ious.min() >= 0.99, ious
    for field in ("mask_scores",):
        if expected.has(field):
            torch.testing.assert_close(got.get(field), expected.get(field), atol=1e-4, rtol=0)


@pytest.fixture(scope="module", params=EXPORTED, ids=lambda c: c.split("/")[-1][: -len(".yaml")])
def exported(request, tmp_path_factory):
    return exported_setup(tmp_path_factory, request.param, OPTS)


@pytest.mark.parametrize("predictor_class", [OnnxPredictor, ProgramPredictor], ids=["onnx", "exported-program"])
def test_exported_matches_eager(exported, predictor_class):
    cfg, paths, _ = exported
    eager = Predictor(cfg)
    runner = predictor_class(cfg, paths["onnx" if predictor_class is OnnxPredictor else "exported-program"])
    for image in images():
        expected = eager(image)["instances"]
        got = runner(image)["instances"]
        assert got.image_size == expected.image_size == image.shape[:2]
        assert_same_detections(got, expected)


def test_onnx_outputs_match_eager(exported):
    """The exported model's own outputs (before pasting) against the eager model's."""
    cfg, paths, model = exported
    if not hasattr(model, "inference"):
        pytest.skip(f"{type(model).__name__} gives no detections before detector_postprocess")
    onnx_model = OnnxPredictor(cfg, paths["onnx"])
    for h, w in SIZES:
        image = example_image(h, w, seed=1)
        with torch.no_grad():
            (expected,) = model.inference([{"image": image}], do_postprocess=False)
        got = onnx_model.run(image)
        assert len(got["boxes"]) == len(expected) > 0
        torch.testing.assert_close(got["boxes"], expected.pred_boxes.tensor, atol=1e-2, rtol=0)
        torch.testing.assert_close(got["mask_probs"], expected.pred_masks, atol=1e-4, rtol=0)
        if expected.has("mask_scores"):
            torch.testing.assert_close(got["mask_scores"], expected.mask_scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("predictor_class", [OnnxPredictor, ProgramPredictor], ids=["onnx", "exported-program"])
def test_files_keep_class_names(exported, predictor_class):
    cfg, paths, _ = exported
    runner = predictor_class(cfg, paths["onnx" if predictor_class is OnnxPredictor else "exported-program"])
    assert list(runner.metadata.thing_classes) == CLASS_NAMES


def test_onnx_graph_has_standard_ops_only(exported):
    import onnx

    _, paths, _ = exported
    model = onnx.load(paths["onnx"])
    ops = {n.op_type for n in model.graph.node}
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert {"RoiAlign", "NonMaxSuppression"} <= ops
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 16


def test_unsupported_module_is_named():
    cfg = build_config(MASK_RCNN, ["MODEL.DEVICE", "cpu", "MODEL.KEYPOINT_ON", "True"], task="predict")
    model = build_model(cfg).eval()
    with pytest.raises(UnsupportedExportError, match=r"roi_heads\.keypoint_head \(.*KRCNNConvDeconvUpsampleHead\)"):
        build_export_module(model)


def test_unsupported_meta_architecture_is_named():
    cfg = build_config(MASK_RCNN, ["MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "PanopticFPN"], task="predict")
    model = build_model(cfg).eval()
    with pytest.raises(UnsupportedExportError, match=r"cannot export the model \(.*PanopticFPN\): no export path"):
        build_export_module(model)


@pytest.mark.parametrize(
    "config, extra, count",
    [
        (MASK_RCNN, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0"], 0),
        (CENTERMASK, ["MODEL.FCOS.INFERENCE_TH_TEST", "1.0"], 0),
        (MASK_RCNN, ["TEST.DETECTIONS_PER_IMAGE", "1"], 1),
    ],
    ids=["mask_rcnn-none", "centermask-none", "mask_rcnn-one"],
)
def test_no_or_one_detection(tmp_path_factory, config, extra, count):
    """The files run on images with no detection and with one (torchvision's NMS fake kernel would
    have made the exported program assert at least 2: instseg_export::nms)."""
    cfg, paths, _ = exported_setup(tmp_path_factory, config, OPTS + extra)
    eager = Predictor(cfg)
    for fmt, predictor_class in (("onnx", OnnxPredictor), ("exported-program", ProgramPredictor)):
        runner = predictor_class(cfg, paths[fmt])
        for image in images():
            expected, got = eager(image)["instances"], runner(image)["instances"]
            assert len(expected) == len(got) == count
            assert got.pred_masks.shape == (count,) + image.shape[:2]
            if count:
                assert torch.equal(got.pred_classes, expected.pred_classes)
                torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-2, rtol=0)
                torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=0)
                assert mask_ious(got.pred_masks, expected.pred_masks).min() >= 0.99
