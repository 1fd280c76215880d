"""projects/export.py: one command per format; a model without an export path is an error naming
the module, and nothing is written."""
import subprocess
import sys

from helpers import CONFIGS, RANDOM_WEIGHTS, run


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
