"""The benchmark script's own logic: FLOPs of VoVNet models (whose module names contain "/"), the
time split by model part, latencies taken in turns, inference under autocast, the same weights in
the parts models share, reading detectron2's per-image inference time and the run time from a
training log, and evaluating a run's final model on another split once."""
import argparse
import math
import os
import sys
import time

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch.utils.flop_counter import FlopCounterMode

from centermask import VOVNET_SPECS, VoVNet
from helpers import is_channels_last
from instseg.utils import seconds_in_turns

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


class _Sleeps(torch.nn.Module):
    def __init__(self, seconds, **children):
        super().__init__()
        self.seconds = seconds
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x):
        time.sleep(self.seconds)
        for child in self.children():
            x = child(x)
        return x


def test_time_parts_splits_one_call_by_part_and_removes_its_hooks():
    roi_heads = _Sleeps(0.0, box_head=_Sleeps(0.05), mask_head=_Sleeps(0.1))
    model = _Sleeps(0.0, backbone=_Sleeps(0.2), roi_heads=roi_heads, unused=_Sleeps(0.0))  # unused: not called
    seconds = benchmark.time_parts(model, lambda: [model.backbone(1), roi_heads(1), roi_heads.mask_head(1)])
    assert list(seconds) == ["backbone", "roi_heads", "roi_heads.box_head", "roi_heads.mask_head", "rest"]
    assert 0.2 <= seconds["backbone"] < 0.3
    assert 0.05 <= seconds["roi_heads.box_head"] < 0.1
    assert 0.2 <= seconds["roi_heads.mask_head"] < 0.3  # called twice: summed
    assert seconds["roi_heads"] >= seconds["roi_heads.box_head"] + 0.1  # includes its parts
    assert 0.1 <= seconds["rest"] < 0.2  # the mask head called outside roi_heads
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_runs_are_timed_in_turns_after_the_warm_up():
    calls = []

    def run(name, seconds):
        return lambda: (calls.append(name), time.sleep(seconds))

    times = seconds_in_turns({"a": run("a", 0.02), "b": run("b", 0.04)}, warmup=1, repeats=3, device="cpu")
    assert calls == ["a", "b"] * 4  # one call each per round, the first round untimed
    assert len(times["a"]) == len(times["b"]) == 3
    assert all(0.02 <= t < 0.035 for t in times["a"]) and all(0.04 <= t < 0.055 for t in times["b"])


def test_latency_stats_are_the_median_and_p90():
    stats = benchmark.latency_stats([5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 6.0, 8.0, 7.0, 10.0, 11.0])
    assert stats == {"latency_median": 6.0, "latency_p90": 10.0}


def _latency_args(**setting):
    """benchmark.py's arguments for one warm-up and one repeat, in the default setting but `setting`."""
    defaults = dict(device="cpu", threads=2, warmup=1, repeats=1, train_iters=1, autocast=None, channels_last=False)
    return argparse.Namespace(**dict(defaults, **setting))


def _recorded_commands(monkeypatch):
    """The command lines that benchmark._measure_in_subprocess runs from now on, recorded instead of run."""
    commands = []
    monkeypatch.setattr(
        benchmark.subprocess, "run",
        lambda cmd, **kwargs: commands.append(cmd) or argparse.Namespace(returncode=0, stdout="{}", stderr=""),
    )
    return commands


def test_inference_runs_under_autocast_when_asked_and_subprocesses_are_told(monkeypatch):
    args = _latency_args(autocast="bfloat16")
    with benchmark.inference_mode("cpu", "bfloat16"):
        assert not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    seen = []  # whether each inference ran under autocast
    model = lambda inputs: seen.append(torch.is_autocast_enabled("cpu"))  # noqa: E731
    monkeypatch.setattr(benchmark, "_build", lambda name, args: (model, None))
    results = benchmark.measure_latencies(["a"], args)
    assert seen == [True, False] * 2  # warm-up + 1 repeat, mixed precision and float32 taking turns
    assert set(results["a"]) == {"latency_median", "latency_p90", "latency_default_median"}

    commands = _recorded_commands(monkeypatch)
    benchmark._measure_in_subprocess(["Mask R-CNN R50-FPN"], args, [], os.environ)
    assert "--autocast=bfloat16" in commands[0]

    args.autocast = None
    with benchmark.inference_mode("cpu"):
        assert not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    benchmark._measure_in_subprocess(["Mask R-CNN R50-FPN"], args, [], os.environ)
    assert not any(c.startswith("--autocast") for c in commands[1])


def test_channels_last_models_take_turns_with_an_nchw_copy_and_subprocesses_are_told(monkeypatch):
    args = _latency_args(channels_last=True)
    model, _ = benchmark._build("Mask R-CNN R50-FPN", args)
    conv = model.backbone.bottom_up.stem.conv1
    assert is_channels_last(conv.weight)
    seen = []  # whether the model's weights were NCHW in each inference

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, inputs):
            seen.append(self.conv.weight.is_contiguous())

    monkeypatch.setattr(benchmark, "_build", lambda name, args: (Spy().to(memory_format=torch.channels_last), None))
    results = benchmark.measure_latencies(["a"], args)
    assert seen == [False, True] * 2  # warm-up + 1 repeat: channels-last and its NCHW copy taking turns
    assert set(results["a"]) == {"latency_median", "latency_p90", "latency_default_median"}
    commands = _recorded_commands(monkeypatch)
    benchmark._measure_in_subprocess(["Mask R-CNN R50-FPN"], args, [], os.environ)
    assert "--channels-last" in commands[0]
    benchmark._measure_in_subprocess(["Mask R-CNN R50-FPN"], _latency_args(), [], os.environ)
    assert "--channels-last" not in commands[1]


def test_a_final_model_is_evaluated_once_and_again_when_it_changes(tmp_path, monkeypatch):
    from helpers import CONFIGS, TINY

    from instseg.checkpoint import Checkpointer
    from instseg.engine import Trainer, build_config

    cfg = build_config(CONFIGS[0], TINY)
    (tmp_path / "config.yaml").write_text(cfg.dump())  # as training writes it
    Checkpointer(Trainer.build_model(cfg), save_dir=str(tmp_path)).save("model_final")
    metrics = benchmark.evaluate_final_model(str(tmp_path), dataset="shapes_val")
    for key in ("segm/AP", "boundary/AP", "bbox/AP"):
        assert 0 <= metrics[key] <= 100
    assert (tmp_path / "shapes_val" / "metrics.json").is_file()

    def no_second_evaluation(*args):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(Trainer, "test", no_second_evaluation)
    assert benchmark.evaluate_final_model(str(tmp_path), dataset="shapes_val") == metrics
    later = os.path.getmtime(tmp_path / "shapes_val" / "metrics.json") + 10
    os.utime(tmp_path / "model_final.pth", (later, later))  # a retrained model
    with pytest.raises(AssertionError, match="evaluated again"):
        benchmark.evaluate_final_model(str(tmp_path), dataset="shapes_val")


def test_models_that_share_parts_are_built_with_the_same_weights_there():
    args = argparse.Namespace(device="cpu", channels_last=False)
    baseline = benchmark._build("Mask R-CNN R50-FPN", args)[0].state_dict()
    torch.manual_seed(1)  # whatever the generator's state before
    refinemask = benchmark._build("RefineMask R50-FPN", args)[0].state_dict()
    shared = [k for k in baseline if k in refinemask and not k.startswith("roi_heads.mask_head.")]
    assert len(shared) > 150 and any(k.startswith("roi_heads.box_predictor.") for k in shared)
    for key in shared:
        assert torch.equal(baseline[key], refinemask[key]), key


def test_last_metrics_reads_null_as_nan(tmp_path):
    (tmp_path / "metrics.json").write_text('{"segm/AP": 1.0, "segm/APs": null, "iteration": 3}\n{"bbox/AP": 2.0}\n')
    metrics = benchmark._last_metrics(str(tmp_path))
    assert metrics["segm/AP"] == 1.0 and metrics["bbox/AP"] == 2.0 and "iteration" not in metrics
    assert math.isnan(metrics["segm/APs"])
