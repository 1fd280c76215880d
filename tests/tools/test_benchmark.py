"""The benchmark package's own logic: FLOPs of VoVNet models (whose module names contain "/"), the
time split by model part, latencies taken in turns, inference under autocast, the same weights in
the parts models share, reading detectron2's per-image inference time and the run time from a
training log, and evaluating a run's final model on another split once."""
import argparse
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch.utils.flop_counter import FlopCounterMode

from benchmark import accuracy, cli, export, models, parts, speed, worker
from benchmark.flops import slash_free
from benchmark.timing import PEAK_RSS_ENV, latency_stats, seconds_in_turns
from centermask import VOVNET_SPECS, VoVNet
from instseg.layers.memory_format import is_channels_last


def test_vovnet_flops_are_counted_on_a_slash_free_copy():
    model = VoVNet(VOVNET_SPECS["V-19-slim-dw-eSE"], 3, ["stage5"]).eval()
    assert any("/" in name for name, _ in model.named_modules())
    copy = slash_free(model)
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
    assert accuracy.inference_seconds_per_image(str(tmp_path)) == 0.03125  # the last evaluation


def test_run_minutes_are_read_from_the_log_timestamps(tmp_path):
    (tmp_path / "log.txt").write_text(
        "[11/21 09:37:25] d2.engine.defaults INFO: Model:\n"
        "  a continuation line without a timestamp\n"
        "[11/21 09:40:00] d2.utils.events INFO:  iter: 19\n"
        "[11/21 09:47:34] d2.evaluation.testing INFO: copypaste: Task: segm\n"
    )
    assert abs(accuracy.log_minutes(str(tmp_path)) - (10 + 9 / 60)) < 1e-9


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
    seconds = parts.time_parts(model, lambda: [model.backbone(1), roi_heads(1), roi_heads.mask_head(1)])
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
    stats = latency_stats([5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 6.0, 8.0, 7.0, 10.0, 11.0])
    assert stats == {"latency_median": 6.0, "latency_p90": 10.0}


def _latency_args(**setting):
    """The speed measurements' arguments for one warm-up and one repeat, in the default setting but `setting`."""
    defaults = dict(device="cpu", threads=2, warmup=1, repeats=1, train_iters=1, autocast=None, channels_last=False)
    return argparse.Namespace(**dict(defaults, **setting))


def _recorded_commands(monkeypatch):
    """The command lines that speed.measure_in_subprocess runs from now on, recorded instead of run."""
    commands = []
    monkeypatch.setattr(
        subprocess, "run",
        lambda cmd, **kwargs: commands.append(cmd) or argparse.Namespace(returncode=0, stdout="{}", stderr=""),
    )
    return commands


def test_inference_runs_under_autocast_when_asked_and_subprocesses_are_told(monkeypatch):
    args = _latency_args(autocast="bfloat16")
    with models.inference_mode("cpu", "bfloat16"):
        assert not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    seen = []  # whether each inference ran under autocast
    model = lambda inputs: seen.append(torch.is_autocast_enabled("cpu"))  # noqa: E731
    monkeypatch.setattr(speed, "build", lambda name, args: (model, None))
    results = speed.measure_latencies(["a"], args)
    assert seen == [True, False] * 2  # warm-up + 1 repeat, mixed precision and float32 taking turns
    assert set(results["a"]) == {"latency_median", "latency_p90", "latency_default_median"}

    commands = _recorded_commands(monkeypatch)
    speed.measure_in_subprocess("model", ["Mask R-CNN R50-FPN"], args, os.environ)
    assert "--autocast=bfloat16" in commands[0]

    args.autocast = None
    with models.inference_mode("cpu"):
        assert not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    speed.measure_in_subprocess("model", ["Mask R-CNN R50-FPN"], args, os.environ)
    assert not any(c.startswith("--autocast") for c in commands[1])


def test_channels_last_models_take_turns_with_an_nchw_copy_and_subprocesses_are_told(monkeypatch):
    args = _latency_args(channels_last=True)
    model, _ = models.build("Mask R-CNN R50-FPN", args)
    conv = model.backbone.bottom_up.stem.conv1
    assert is_channels_last(conv.weight)
    seen = []  # whether the model's weights were NCHW in each inference

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, inputs):
            seen.append(self.conv.weight.is_contiguous())

    monkeypatch.setattr(speed, "build", lambda name, args: (Spy().to(memory_format=torch.channels_last), None))
    results = speed.measure_latencies(["a"], args)
    assert seen == [False, True] * 2  # warm-up + 1 repeat: channels-last and its NCHW copy taking turns
    assert set(results["a"]) == {"latency_median", "latency_p90", "latency_default_median"}
    commands = _recorded_commands(monkeypatch)
    speed.measure_in_subprocess("model", ["Mask R-CNN R50-FPN"], args, os.environ)
    assert "--channels-last" in commands[0]
    speed.measure_in_subprocess("model", ["Mask R-CNN R50-FPN"], _latency_args(), os.environ)
    assert "--channels-last" not in commands[1]


@pytest.mark.slow
def test_a_final_model_is_evaluated_once_and_again_when_it_changes(tmp_path, monkeypatch):
    from helpers import CONFIGS, TINY

    from instseg.checkpoint import Checkpointer
    from instseg.engine import Trainer, build_config

    cfg = build_config(CONFIGS[0], TINY)
    (tmp_path / "config.yaml").write_text(cfg.dump())  # as training writes it
    Checkpointer(Trainer.build_model(cfg), save_dir=str(tmp_path)).save("model_final")
    metrics = accuracy.evaluate_final_model(str(tmp_path), dataset="shapes_val")
    for key in ("segm/AP", "boundary/AP", "bbox/AP"):
        assert 0 <= metrics[key] <= 100
    assert (tmp_path / "shapes_val" / "metrics.json").is_file()

    def no_second_evaluation(*args):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(Trainer, "test", no_second_evaluation)
    assert accuracy.evaluate_final_model(str(tmp_path), dataset="shapes_val") == metrics
    later = os.path.getmtime(tmp_path / "shapes_val" / "metrics.json") + 10
    os.utime(tmp_path / "model_final.pth", (later, later))  # a retrained model
    with pytest.raises(AssertionError, match="evaluated again"):
        accuracy.evaluate_final_model(str(tmp_path), dataset="shapes_val")


def test_models_that_share_parts_are_built_with_the_same_weights_there():
    args = argparse.Namespace(device="cpu", channels_last=False)
    baseline = models.build("Mask R-CNN R50-FPN", args)[0].state_dict()
    torch.manual_seed(1)  # whatever the generator's state before
    refinemask = models.build("RefineMask R50-FPN", args)[0].state_dict()
    shared = [k for k in baseline if k in refinemask and not k.startswith("roi_heads.mask_head.")]
    assert len(shared) > 150 and any(k.startswith("roi_heads.box_predictor.") for k in shared)
    for key in shared:
        assert torch.equal(baseline[key], refinemask[key]), key


def test_last_metrics_reads_null_as_nan(tmp_path):
    (tmp_path / "metrics.json").write_text('{"segm/AP": 1.0, "segm/APs": null, "iteration": 3}\n{"bbox/AP": 2.0}\n')
    metrics = accuracy.last_metrics(str(tmp_path))
    assert metrics["segm/AP"] == 1.0 and metrics["bbox/AP"] == 2.0 and "iteration" not in metrics
    assert math.isnan(metrics["segm/APs"])


@pytest.mark.parametrize("command", cli.SUBCOMMANDS)
def test_each_subcommand_has_a_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmark {command} ")


def test_the_package_runs_as_a_module_with_one_subcommand_per_job():
    assert cli.SUBCOMMANDS == ("speed", "parts", "accuracy", "roi-align", "blender", "export")
    out = subprocess.run([sys.executable, "-m", "benchmark", "--help"], capture_output=True, text=True, check=True).stdout
    assert all(command in out for command in cli.SUBCOMMANDS)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([])  # a subcommand is required


def _parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_speed_arguments():
    args = _parse("speed")
    assert (args.device, args.threads, args.warmup, args.repeats, args.train_iters) == ("cpu", 2, 1, 5, 2)
    assert args.autocast is None and not args.channels_last
    assert args.models == list(models.SPEED_MODELS) and args.output == "output/benchmark"
    assert args.run is speed.main
    args = _parse("speed", "--device", "cuda", "--threads", "4", "--repeats", "50", "--autocast", "bfloat16",
                  "--channels-last", "--models", "BlendMask R50", "--output", "out")
    assert (args.device, args.threads, args.repeats, args.autocast) == ("cuda", 4, 50, "bfloat16")
    assert args.channels_last and args.models == ["BlendMask R50"] and args.output == "out"
    with pytest.raises(SystemExit):
        _parse("speed", "--models", "no such model")


def test_parts_arguments():
    args = _parse("parts")
    assert args.models == list(models.SPEED_MODELS) and args.device == "cpu" and args.run is parts.main
    args = _parse("parts", "--models", "RefineMask R50-FPN", "--channels-last", "--autocast", "float16")
    assert args.models == ["RefineMask R50-FPN"] and args.channels_last and args.autocast == "float16"


def test_accuracy_arguments():
    args = _parse("accuracy")
    assert args.models == list(models.ACCURACY_MODELS) and args.output == "output/benchmark"
    assert args.run is accuracy.main
    assert _parse("accuracy", "--models", "BlendMask R18").models == ["BlendMask R18"]
    assert _parse("accuracy", "--models").models == []  # none retrained: the rows are re-read


def test_roi_align_arguments():
    from benchmark import roi_align

    args = _parse("roi-align")
    assert (args.rois, args.channels, args.repeats, args.device, args.threads) == (512, 256, 7, "cpu", 2)
    assert not args.channels_last and not args.forward_only and args.run is roi_align.main
    args = _parse("roi-align", "--rois", "8", "--channels", "16", "--channels-last", "--forward-only")
    assert (args.rois, args.channels) == (8, 16) and args.channels_last and args.forward_only


def test_blender_arguments():
    from benchmark import blender

    args = _parse("blender")
    assert (args.boxes, args.repeats, args.device, args.threads) == (100, 9, "cpu", 2) and args.run is blender.main
    args = _parse("blender", "--boxes", "10", "--repeats", "3", "--device", "cuda", "--threads", "1")
    assert (args.boxes, args.repeats, args.device, args.threads) == (10, 3, "cuda", 1)


def test_the_worker_gets_the_options_of_the_speed_run(monkeypatch):
    commands = _recorded_commands(monkeypatch)
    args = _parse("speed", "--device", "cuda", "--threads", "3", "--warmup", "2", "--repeats", "7",
                  "--train-iters", "4", "--autocast", "float16", "--channels-last")
    speed.measure_in_subprocess("latency", ["Mask R-CNN R50-FPN", "BlendMask R50"], args)
    assert commands[0][:3] == [sys.executable, "-m", "benchmark.worker"]
    job = worker.build_parser().parse_args(commands[0][3:])
    assert job.job == "latency" and job.models == ["Mask R-CNN R50-FPN", "BlendMask R50"]
    for option in ("device", "threads", "warmup", "repeats", "train_iters", "autocast", "channels_last"):
        assert getattr(job, option) == getattr(args, option), option
    job = worker.build_parser().parse_args(["blender-memory", "fused", "--device", "cpu", "--boxes", "10"])
    assert (job.variant, job.boxes) == ("fused", 10)


def test_speed_measures_memory_in_a_process_of_its_own_and_writes_the_table(monkeypatch, tmp_path):
    from benchmark import tables

    jobs = []

    def measure(job, names, args, env=None):
        jobs.append((job, names, env))
        return {name: {} for name in names} if job == "latency" else {job: 1}

    monkeypatch.setattr(speed, "measure_in_subprocess", measure)
    monkeypatch.setattr(tables, "speed_table", lambda results, args: f"table of {sorted(results['BlendMask R50'])}")
    speed.main(_parse("speed", "--models", "BlendMask R50", "--autocast", "bfloat16", "--output", str(tmp_path)))
    assert [(job, names) for job, names, _ in jobs] == [
        ("latency", ["BlendMask R50"]), ("model", ["BlendMask R50"]), ("memory", ["BlendMask R50"])
    ]
    assert [env is not None and PEAK_RSS_ENV.items() <= env.items() for _, _, env in jobs] == [False, False, True]
    assert (tmp_path / "speed_cpu_bfloat16.md").read_text() == "table of ['memory', 'model']\n"
    assert speed.output_name(_parse("speed", "--channels-last")) == "speed_cpu_channels_last.md"
    assert speed.output_name(_parse("speed")) == "speed_cpu.md"


def test_export_arguments():
    args = _parse("export")
    assert (args.threads, args.warmup, args.repeats, args.output) == (2, 1, 5, None)
    assert args.models == list(models.SPEED_MODELS) and args.run is export.main


@pytest.mark.slow
def test_export_benchmark_times_both_runtimes_in_one_table(tmp_path, monkeypatch, capsys):
    """The small Mask R-CNN at 160 x 192: both runtimes timed, the ratio theirs, the file's size and
    the same number of detections on both sides; a model without an export path is a row saying why."""
    monkeypatch.setitem(models.SPEED_MODELS, "small", ("configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml", (160, 192)))
    row = export.measure("small", _parse("export", "--repeats", "1"), str(tmp_path))
    assert row["eager_ms"] > 0 and row["onnxruntime_ms"] > 0
    assert row["ratio"] == pytest.approx(row["onnxruntime_ms"] / row["eager_ms"])
    assert row["onnx_mb"] > 1 and row["detections"][0] == row["detections"][1] > 0
    text = export.table([row, {"model": "other", "error": "no export path"}], _parse("export"))
    assert f"| {row['ratio']:.2f}x |" in text and "| other | not exported: no export path |" in text
