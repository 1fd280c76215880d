"""Every exportable method end to end (instseg.export): ONNX run by ONNX Runtime, the TorchScript
trace and the torch.export ExportedProgram give the eager model's detections on two image sizes,
for a randomly initialised model and for one trained a few iterations on the embedded data (both
keeping every detection)."""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from helpers import CONFIGS, RANDOM_WEIGHTS, TINY, ZERO_THRESHOLDS, run
from instseg.checkpoint import load_inference_weights
from instseg.engine import Predictor, build_config
from instseg.export import (
    FORMATS, PREDICTORS, OnnxPredictor, UnsupportedExportError, build_export_module, example_image, export,
)
from instseg.export.exporter import DEFAULT_EXTENSIONS

# each test exports models (tens of seconds each): the slow tier
pytestmark = pytest.mark.slow

MASK_RCNN, CENTERMASK, BLENDMASK, REFINEMASK = CONFIGS
REFINEMASK_FASTER_BETTER = "configs/RefineMask/refinemask_faster_better_R_18_FPN_shapes.yaml"
BLENDMASK_RT = "configs/BlendMask/RT_R_50_4x_syncbn_shtw.yaml"
# the RT config (COCO, ImageNet weights, SyncBN) on the embedded data, from scratch on one process
RT_ON_SHAPES = ["MODEL.WEIGHTS", "", "DATASETS.TRAIN", "('shapes_train',)", "DATASETS.TEST", "('shapes_val',)",
                "MODEL.ROI_HEADS.NUM_CLASSES", "3", "INPUT.MASK_FORMAT", "bitmask", "MODEL.RESNETS.NORM", "BN"]
EXPORTED = [MASK_RCNN, CENTERMASK, REFINEMASK, REFINEMASK_FASTER_BETTER, BLENDMASK, BLENDMASK_RT]
TRAINED = [MASK_RCNN, CENTERMASK, REFINEMASK, BLENDMASK, BLENDMASK_RT]
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


def config_opts(config):
    return (RT_ON_SHAPES if config == BLENDMASK_RT else []) + OPTS


def exported_setup(tmp_path_factory, config, opts, seed=0, adjust=decisive_mask_logits, weights=None):
    """A model of checkpoint `weights`, or else a randomly initialised one (seed `seed`, then
    `adjust`ed) saved as a checkpoint: its config, the model, and it exported to every format (at
    SIZES[0]): {format: path}."""
    root = tmp_path_factory.mktemp("export")
    if weights is None:
        cfg = build_config(config, opts, task="predict")
        torch.manual_seed(seed)
        model = build_model(cfg).eval()
        adjust(model)
        weights = str(root / "model.pth")
        torch.save({"model": model.state_dict()}, weights)
    cfg = build_config(config, opts + ["MODEL.WEIGHTS", weights], task="predict")
    model = build_model(cfg).eval()
    load_inference_weights(model, cfg)
    module = build_export_module(model)
    paths = {fmt: str(root / ("model" + DEFAULT_EXTENSIONS[fmt])) for fmt in FORMATS}
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


def in_expected_order(got, expected):
    """`got` reordered so that each detection stands at the place of the expected one it matches
    (its class, its score within 1e-4, its box within 1e-2 px): detections whose scores differ by
    float rounding only may come sorted either way."""
    assert len(got) == len(expected) > 0
    order, free = [], list(range(len(got)))
    for i in range(len(expected)):
        box_diff = (got.pred_boxes.tensor[free] - expected.pred_boxes.tensor[i]).abs().amax(dim=1)
        close = ((got.pred_classes[free] == expected.pred_classes[i]) & (box_diff <= 1e-2)
                 & ((got.scores[free] - expected.scores[i]).abs() <= 1e-4))
        assert close.any(), (f"expected detection {i} (class {expected.pred_classes[i]}, score {expected.scores[i]:.6f}, "
                             f"box {expected.pred_boxes.tensor[i].tolist()}) has no match")
        order.append(free.pop(int(torch.nonzero(close)[0])))
    return got[torch.tensor(order)]


def assert_same_detections(got, expected):
    got = in_expected_order(got, expected)
    assert torch.equal(got.pred_classes.long(), expected.pred_classes.long())
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-2, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=0)
    assert expected.pred_masks.flatten(1).any(1).sum() >= 3  # masks to compare, not only empty ones
    ious = mask_ious(got.pred_masks, expected.pred_masks)
    assert ious.min() >= 0.99, ious
    for field in ("mask_scores",):
        if expected.has(field):
            torch.testing.assert_close(got.get(field), expected.get(field), atol=1e-4, rtol=0)


def config_id(config):
    return config.split("/")[-1][: -len(".yaml")]


@pytest.fixture(scope="module", params=EXPORTED, ids=config_id)
def exported(request, tmp_path_factory):
    return exported_setup(tmp_path_factory, request.param, config_opts(request.param))


def trained_setup(tmp_path_factory, config):
    """exported_setup of the config trained a few iterations by projects/train_net.py (a fresh
    process, SEED 0)."""
    output_dir = str(tmp_path_factory.mktemp("trained"))
    run("projects/train_net.py", "--config-file", config, *(RT_ON_SHAPES if config == BLENDMASK_RT else []),
        *TINY, "SEED", "0", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", output_dir)
    return exported_setup(tmp_path_factory, config, config_opts(config), weights=f"{output_dir}/model_final.pth")


@pytest.fixture(scope="module", params=TRAINED, ids=config_id)
def trained_exported(request, tmp_path_factory):
    return trained_setup(tmp_path_factory, request.param)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_matches_eager(exported, fmt):
    assert_matches_eager(*exported[:2], fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_trained_exported_matches_eager(trained_exported, fmt):
    assert_matches_eager(*trained_exported[:2], fmt)


def assert_matches_eager(cfg, paths, fmt):
    eager = Predictor(cfg)
    runner = PREDICTORS[fmt](cfg, paths[fmt])
    for image in images():
        expected = eager(image)["instances"]
        got = runner(image)["instances"]
        assert got.image_size == expected.image_size == image.shape[:2]
        assert_same_detections(got, expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_images_below_the_programs_minimum_side(exported, fmt):
    """A 56 px high resized image, under the coarsest feature map's stride (64 or 128 px but for
    BlendMask RT's 32): ONNX Runtime and the TorchScript trace give the eager model's detections;
    the ExportedProgram, which needs stride + 1 px, is a clear error."""
    cfg, paths, _ = exported
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 56, 400
    cfg.freeze()
    image = np.random.default_rng(1).integers(0, 256, (70, 400, 3), dtype=np.uint8)
    runner = PREDICTORS[fmt](cfg, paths[fmt])
    if fmt == "exported-program" and runner.min_side > 56:  # not BlendMask RT: its P5 needs 33 px
        with pytest.raises(ValueError, match=rf"takes images of at least {runner.min_side} px a side; the resized image is 320x56"):
            runner(image)
        return
    expected, got = Predictor(cfg)(image)["instances"], runner(image)["instances"]
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


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_keep_class_names(exported, fmt):
    cfg, paths, _ = exported
    runner = PREDICTORS[fmt](cfg, paths[fmt])
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
    cfg, paths, _ = exported_setup(tmp_path_factory, config, config_opts(config) + extra)
    eager = Predictor(cfg)
    for fmt in FORMATS:
        runner = PREDICTORS[fmt](cfg, paths[fmt])
        for image in images():
            expected, got = eager(image)["instances"], runner(image)["instances"]
            assert len(expected) == len(got) == count
            assert got.pred_masks.shape == (count,) + image.shape[:2]
            if count:
                assert torch.equal(got.pred_classes, expected.pred_classes)
                torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-2, rtol=0)
                torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=0)
                assert mask_ious(got.pred_masks, expected.pred_masks).min() >= 0.99


def largest_differences(cfg, paths) -> dict:
    """Per format, over both SIZES: the detections and the largest box, score and mask_scores
    differences and the smallest pasted-mask IoU against the eager Predictor (matched detections)."""
    eager, rows = Predictor(cfg), {}
    for fmt in FORMATS:
        runner, row = PREDICTORS[fmt](cfg, paths[fmt]), {"detections": set(), "boxes": 0.0, "scores": 0.0, "iou": 1.0}
        for image in images():
            expected = eager(image)["instances"]
            got = in_expected_order(runner(image)["instances"], expected)
            row["detections"].add(len(expected))
            row["boxes"] = max(row["boxes"], (got.pred_boxes.tensor - expected.pred_boxes.tensor).abs().max().item())
            row["scores"] = max(row["scores"], (got.scores - expected.scores).abs().max().item())
            row["iou"] = min(row["iou"], mask_ious(got.pred_masks, expected.pred_masks).min().item())
        rows[fmt] = row
    return rows


if __name__ == "__main__":
    # python tests/export/test_export_methods.py (PYTHONPATH=tests): the table of docs/export.md
    import tempfile
    from pathlib import Path

    class TempDirs:  # tmp_path_factory's mktemp outside pytest
        def mktemp(self, name):
            return Path(tempfile.mkdtemp(prefix=name))

    print("| model | weights | format | detections | boxes (px) | scores | pasted mask IoU |")
    print("|---|---|---|---|---|---|---|")
    for weights, configs in (("random", EXPORTED), ("trained", TRAINED)):
        for config in configs:
            if weights == "random":
                cfg, paths, _ = exported_setup(TempDirs(), config, config_opts(config))
            else:
                cfg, paths, _ = trained_setup(TempDirs(), config)
            for fmt, row in largest_differences(cfg, paths).items():
                counts = "/".join(str(n) for n in sorted(row["detections"]))
                print(f"| {config_id(config)} | {weights} | {fmt} | {counts} | {row['boxes']:.1e} | {row['scores']:.1e} "
                      f"| {row['iou']:.4f} |", flush=True)
