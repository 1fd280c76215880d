"""The benchmark script's own logic: FLOPs of VoVNet models (whose module names contain "/") and
reading detectron2's per-image inference time and the run time from a training log."""
import os
import sys

import torch
from fvcore.nn import FlopCountAnalysis
from torch.utils.flop_counter import FlopCounterMode

from centermask import VOVNET_SPECS, VoVNet

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects"))
import benchmark  # noqa: E402


def test_vovnet_flops_are_counted_on_a_slash_free_copy():
    model = VoVNet(VOVNET_SPECS["V-19-slim-dw-eSE"], 3, ["stage5"]).eval()
    assert any("/" in name for name, _ in model.named_modules())
    copy = benchmark._slash_free(model)
    assert not any("/" in name for name, _ in copy.named_modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(copy(x)["stage5"], model(x)["stage5"])  # same network, same order
        flops = FlopCountAnalysis(copy, (x,)).unsupported_ops_warnings(False).total()
        with FlopCounterMode(display=False) as torch_counter:  # an independent count, 2 per multiply-add
            model(x)
    assert flops > 0
    assert abs(flops - torch_counter.get_total_flops() / 2) < 0.1 * flops


def test_inference_time_is_read_from_the_log(tmp_path):
    (tmp_path / "log.txt").write_text(
        "[d2.evaluation.evaluator]: Total inference pure compute time: 0:00:02 (0.045000 s / iter per device, on 1 devices)\n"
        "[d2.evaluation.evaluator]: Total inference pure compute time: 0:00:01 (0.031250 s / iter per device, on 1 devices)\n"
    )
    assert benchmark._inference_seconds_per_image(str(tmp_path)) == 0.03125  # the last evaluation


def test_run_minutes_are_read_from_the_log_timestamps(tmp_path):
    (tmp_path / "log.txt").write_text(
        "[11/21 09:37:25] d2.engine.defaults INFO: Model:\n"
        "  a continuation line without a timestamp\n"
        "[11/21 09:40:00] d2.utils.events INFO:  iter: 19\n"
        "[11/21 09:47:34] d2.evaluation.testing INFO: copypaste: Task: segm\n"
    )
    assert abs(benchmark._log_minutes(str(tmp_path)) - (10 + 9 / 60)) < 1e-9
