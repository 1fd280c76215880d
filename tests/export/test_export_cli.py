"""projects/export.py: one command per format; a model without an export path is an error naming
the module, and nothing is written."""
import subprocess
import sys

import pytest
from helpers import CONFIGS, RANDOM_WEIGHTS, run

# each test exports models (tens of seconds each): the slow tier
pytestmark = pytest.mark.slow


def test_cli_writes_onnx_of_mask_rcnn(tmp_path):
    output = tmp_path / "mask_rcnn.onnx"
    out = run("projects/export.py", "--config-file", CONFIGS[0], "--format", "onnx", "--output", str(output),
              "--opts", *RANDOM_WEIGHTS, "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160")
    assert f"wrote onnx {output}" in out
    import onnx

    onnx.checker.check_model(onnx.load(str(output)))


def test_cli_refuses_unsupported_module(tmp_path):
    output = tmp_path / "keypoints.onnx"
    proc = subprocess.run(
        [sys.executable, "projects/export.py", "--config-file", CONFIGS[0], "--format", "onnx",
         "--output", str(output), "--opts", *RANDOM_WEIGHTS, "MODEL.KEYPOINT_ON", "True"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot export roi_heads.keypoint_head" in proc.stderr
    assert "KRCNNConvDeconvUpsampleHead" in proc.stderr
    assert not output.exists()


def test_demo_exported_backends_match_pytorch(tmp_path):
    """projects/export.py then projects/demo.py --backend onnxruntime / torchscript --model: the COCO
    results of the eager model."""
    import json

    import numpy as np
    import torch
    from detectron2.modeling import build_model
    from PIL import Image

    from instseg.engine import build_config

    opts = ["INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "192"]
    cfg = build_config(CONFIGS[0], ["MODEL.DEVICE", "cpu"] + opts, task="predict")
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    results = {}
    for backend, fmt in (("pytorch", None), ("onnxruntime", "onnx"), ("torchscript", "torchscript")):
        model_args = []
        if fmt:
            model_file = tmp_path / f"model.{fmt}"
            run("projects/export.py", "--config-file", CONFIGS[0], "--format", fmt, "--output", str(model_file),
                "--opts", "MODEL.WEIGHTS", str(weights), *opts)
            model_args = ["--model", str(model_file)]
        out = tmp_path / f"{backend}.json"
        run("projects/demo.py", "--config-file", CONFIGS[0], "--input", str(tmp_path / "a.png"), "--output-json",
            str(out), "--backend", backend, *model_args, "--confidence-threshold", "0.05",
            "--opts", "MODEL.WEIGHTS", str(weights), *opts)
        results[backend] = json.loads(out.read_text())
    expected = results.pop("pytorch")
    assert len(expected) > 0
    for backend, got in results.items():
        assert len(got) == len(expected), backend
        assert [r["category_id"] for r in got] == [r["category_id"] for r in expected]
        np.testing.assert_allclose([r["bbox"] for r in got], [r["bbox"] for r in expected], atol=1e-2)
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-4)


@pytest.mark.parametrize("backend_args, message", [
    (["--backend", "onnxruntime"], "--backend onnxruntime needs --model"),
    (["--model", "model.onnx"], "--model is the exported file of --backend onnxruntime / torchscript / exported-program"),
])
def test_demo_backend_and_model_go_together(tmp_path, backend_args, message):
    proc = subprocess.run([sys.executable, "projects/demo.py", "--config-file", CONFIGS[0], "--input", str(tmp_path),
                           "--output", str(tmp_path / "pictures"), *backend_args], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr
