"""The GPU check of issue 29, in one run: build the extension with CUDA for this GPU, the op tests on
CUDA, each method trained on CUDA (float32 and AMP) and evaluated, Predictor on CUDA, 2-GPU DDP where
there are two GPUs, and the CUDA benchmarks against the goals of docs/gpu.md.

    tools/gpu_check.sh OUT_DIR             # on a machine with a CUDA GPU (about 8 minutes on an H100)
    tools/gpu_check.sh OUT_DIR --dry-run   # anywhere: every step says what it would run; the cheap
                                           # CPU parts run (environment, test collection, a tiny
                                           # CPU roi-align benchmark), so that the script cannot rot
    tools/gpu_check.sh OUT_DIR --only build op-tests   # some steps (name prefixes) again

Everything goes under OUT_DIR: log.txt (all output), figures.json (each step's status, time and
figures; the goals and whether they are met), summary.md (the same as tables), the benchmark tables
(speed_cuda.md, roi_align_cuda.md, blender_cuda.md) and the training runs (runs/). A failed step is
recorded and the next one runs; the exit status is 1 when any step failed.
"""
import argparse
import ast
import datetime
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

METHODS = {
    "maskrcnn": "configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml",
    "centermask": "configs/CenterMask/centermask_lite_V_19_eSE_shapes.yaml",
    "blendmask": "configs/BlendMask/R_18_shapes.yaml",
    "refinemask": "configs/RefineMask/refinemask_R_18_FPN_shapes.yaml",
}
PRECISIONS = {"fp32": [], "amp": ["SOLVER.AMP.ENABLED", "True"]}
# 20 iterations on the embedded data at the configs' image sizes; every detection kept so that the
# evaluation and Predictor of a barely trained model have something to show
TRAIN_OPTS = [
    "SOLVER.MAX_ITER", "20", "SOLVER.STEPS", "(15,)", "SOLVER.WARMUP_ITERS", "5",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "MODEL.DEVICE", "cuda",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.FCOS.INFERENCE_TH_TEST", "0.0",
]
SPEED_MODELS = ["Mask R-CNN R50-FPN", "BlendMask R50", "BlendMask RT R50 (550)", "CenterMask-Lite V-19",
                "RefineMask R50-FPN"]
REFERENCE = SPEED_MODELS[0]
# (figure, comparison, threshold, what it means): docs/gpu.md
GOALS = [
    ("latency_ratio/BlendMask R50", "<=", 0.8, "BlendMask R50 latency <= 0.8x Mask R-CNN R50-FPN"),
    ("latency_ratio/CenterMask-Lite V-19", "<=", 0.4, "CenterMask-Lite V-19 latency <= 0.4x Mask R-CNN"),
    ("latency_ratio/RefineMask R50-FPN", "<=", 1.4, "RefineMask R50-FPN latency <= 1.4x Mask R-CNN"),
    ("fps/BlendMask RT R50 (550)", ">=", 60.0, "BlendMask-RT R50 at 550 >= 60 FPS"),
    ("roi_align_speedup_min", ">=", 1.0, "CUDA RoIAlign forward+backward >= 1.0x torchvision's"),
    ("blender_speedup", ">=", 2.0, "fused CUDA blender >= 2x the plain composition"),
]
NOT_MEASURED = "not yet measured"


@dataclass
class Step:
    """One step: its commands (argv lists, run in turn from the repo root), or an in-process `action`;
    `check(ctx, output)` returns the step's figures or raises AssertionError; `dry_commands` replace
    the commands in a dry run (None: nothing runs then, the commands are only printed)."""
    name: str
    commands: List[List[str]] = field(default_factory=list)
    check: Optional[Callable] = None
    env: dict = field(default_factory=dict)
    dry_commands: Optional[List[List[str]]] = None
    action: Optional[Callable] = None
    dry_action: bool = False
    skip: Optional[str] = None
    note: str = ""
    timeout: int = 600


class Context:
    def __init__(self, out: Path, dry_run: bool, device: dict):
        self.out, self.dry_run, self.device = out, dry_run, device
        self.log = open(out / "log.txt", "a")

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()


def describe_device() -> dict:
    """What this machine has: torch, CUDA, the GPUs and their architecture, nvcc."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "gpus": [], "arch": None, "cuda_home": CUDA_HOME, "python": sys.version.split()[0]}
    if info["cuda_available"]:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        major, minor = torch.cuda.get_device_capability(0)
        info["arch"] = f"{major}.{minor}"
    return info


# --- the checks: each reads a step's output (or files) and returns its figures ---

def check_build(ctx, output):
    missing = [op for op in ("roi_align", "blend") if f"instseg::{op} CUDA False" in output]
    assert "instseg::roi_align CUDA True" in output, "instseg._C has no CUDA kernels"
    assert not missing, f"no CUDA kernel for {missing}"
    return {}


def junit_counts(path: Path) -> dict:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    reasons = [s.get("message", "") for s in suite.iter("skipped")]
    counts["cuda_skips"] = [r for r in reasons if re.search(r"cuda|gpu", r, re.IGNORECASE)]
    return counts


def check_op_tests(ctx, output):
    if ctx.dry_run:  # collection only: how many tests the CPU machine sees
        per_file = re.findall(r"^tests/layers/\S+\.py: (\d+)$", output, re.MULTILINE)
        assert per_file, "pytest collected no tests"
        return {"collected_on_cpu": sum(map(int, per_file))}
    counts = junit_counts(ctx.out / "op_tests.xml")
    assert counts["failures"] == counts["errors"] == 0, f"op tests failed: {counts}"
    assert not counts["cuda_skips"], f"CUDA tests were skipped on a CUDA machine: {counts['cuda_skips']}"
    return counts


def read_metrics(run_dir: Path) -> list:
    with open(run_dir / "metrics.json") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_training(run_dir: Path):
    def check(ctx, output):
        rows = read_metrics(run_dir)
        rows = [r for r in rows if "total_loss" in r]  # written every 20 iterations and at the last
        losses = [r["total_loss"] for r in rows]
        assert losses, "metrics.json has no total_loss"
        bad = [x for x in losses if not (isinstance(x, (int, float)) and math.isfinite(x))]
        assert not bad, f"non-finite losses: {bad}"
        assert (run_dir / "model_final.pth").is_file(), "no model_final.pth"
        return {"iterations": max(r.get("iteration", 0) for r in rows) + 1, "last_total_loss": losses[-1]}
    return check


def check_evaluation(run_dir: Path):
    def check(ctx, output):
        rows = [r for r in read_metrics(run_dir) if "segm/AP" in r]
        assert rows, "the run's evaluation wrote no segm/AP"
        figures = {k: rows[-1][k] for k in ("bbox/AP", "segm/AP") if k in rows[-1]}
        assert all(math.isfinite(v) for v in figures.values()), figures
        return figures
    return check


def check_predict(ctx, output):
    found = re.findall(r"^predicted (\S+) (\d+)$", output, re.MULTILINE)
    assert found, "Predictor printed no predictions"
    counts = {name: int(n) for name, n in found}
    assert all(counts.values()), f"Predictor found nothing: {counts}"
    return {"detections": counts}


def check_ddp(ctx, output):
    assert "World size: 2" in output, "not 2 processes"
    assert "model weights are identical on all 2 processes" in output
    return {}


def parse_speed(output: str) -> dict:
    """The per-model dicts `python -m benchmark speed` prints (`NAME: {...}`)."""
    results = {}
    for name in SPEED_MODELS:
        match = re.search(rf"^{re.escape(name)}: (\{{.*\}})\s*$", output, re.MULTILINE)
        if match:
            results[name] = ast.literal_eval(re.sub(r"\b(nan|inf)\b", "None", match.group(1)))
    return results


def speed_figures(results: dict) -> dict:
    figures = {}
    ref = results[REFERENCE]["latency_median"]
    for name, r in results.items():
        figures[f"latency_ms/{name}"] = r["latency_median"] * 1e3
        figures[f"latency_ratio/{name}"] = r["latency_median"] / ref
    rt = "BlendMask RT R50 (550)"
    if rt in results:
        figures[f"fps/{rt}"] = 1.0 / results[rt]["latency_median"]
    return figures


def check_speed(ctx, output):
    results = parse_speed(output)
    assert REFERENCE in results, "the speed benchmark printed no Mask R-CNN result"
    assert set(results) == set(SPEED_MODELS), f"missing: {sorted(set(SPEED_MODELS) - set(results))}"
    return speed_figures(results)


def parse_roi_align(output: str) -> dict:
    """`| 7x7 | torchvision ms | ours ms | 1.23x |` rows -> {"7x7": 1.23, ...}."""
    rows = re.findall(r"^\| (\d+x\d+) \| [\d.]+ \| [\d.]+ \| ([\d.]+)x \|$", output, re.MULTILINE)
    return {size: float(speedup) for size, speedup in rows}


def check_roi_align(path: Path):
    def check(ctx, output):
        speedups = parse_roi_align(output)
        assert speedups, "the roi-align benchmark printed no table"
        path.write_text(output)
        figures = {f"roi_align_speedup/{size}": s for size, s in speedups.items()}
        return dict(figures, roi_align_speedup_min=min(speedups.values()))
    return check


def parse_blender(output: str) -> Optional[float]:
    match = re.search(r"fused vs reference: ([\d.]+)x faster", output)
    return float(match.group(1)) if match else None


def check_blender(path: Path):
    def check(ctx, output):
        speedup = parse_blender(output)
        assert speedup is not None, "the blender benchmark printed no speed-up"
        path.write_text(output)
        return {"blender_speedup": speedup}
    return check


# --- the steps ---

def kernels_main(argv) -> None:
    """`gpu_check.py _kernels`: whether instseg._C has CUDA kernels for its ops."""
    import torch

    import instseg._C  # noqa: F401

    for op in ("roi_align", "blend"):
        print(f"instseg::{op} CUDA", torch._C._dispatch_has_kernel_for_dispatch_key(f"instseg::{op}", "CUDA"))


def predict_main(argv) -> None:
    """`gpu_check.py _predict DEVICE RUN_DIR AUTOCAST [RUN_DIR AUTOCAST ...]`: Predictor from each training
    run's config.yaml and model_final.pth on two validation images; prints `predicted RUN N`."""
    from detectron2.data.detection_utils import read_image

    from instseg.engine import Predictor, build_config

    device = argv[0]
    for run_dir, autocast in zip(argv[1::2], argv[2::2]):
        cfg = build_config(os.path.join(run_dir, "config.yaml"), [
            "MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth"), "MODEL.DEVICE", device, "TEST.AUTOCAST", autocast])
        predictor, count = Predictor(cfg), 0
        for i in range(2):
            inst = predictor(read_image(str(ROOT / f"datasets/shapes/val/{i:05d}.png"), format="BGR"))["instances"]
            assert tuple(inst.pred_masks.shape[1:]) == inst.image_size and inst.scores.isfinite().all()
            count += len(inst)
        print("predicted", os.path.basename(run_dir.rstrip("/")), count, flush=True)


INTERNAL = {"_kernels": kernels_main, "_predict": predict_main}
SELF = [PY, "tools/gpu_check.py"]


def build_steps(out: Path, device: dict, dry_run: bool) -> List[Step]:
    arch = device["arch"] or "9.0"
    cuda_home = os.environ.get("CUDA_HOME") or device["cuda_home"] or "/usr/local/cuda"
    steps = [
        Step("environment", action=lambda ctx: {k: v for k, v in ctx.device.items()}, dry_action=True,
             note="torch, the GPUs, their architecture"),
        Step(
            "build",
            commands=[
                [PY, "setup.py", "-q", "build_ext", "--inplace", "--build-temp", "build/gpu-check/tmp"],
                [*SELF, "_kernels"],
            ],
            env={"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "CUDA_HOME": cuda_home},
            check=check_build,
            timeout=1200,
            note=f"the extension with CUDA kernels for this GPU's architecture only ({arch})",
        ),
        Step(
            "op-tests",
            commands=[[PY, "-m", "pytest", "tests/layers", "-q", "-rs", "-p", "no:cacheprovider",
                       f"--junitxml={out / 'op_tests.xml'}"]],
            dry_commands=[[PY, "-m", "pytest", "tests/layers", "-q", "-q", "--collect-only", "-p", "no:cacheprovider"]],
            check=check_op_tests,
            note="RoIAlign/blender on CUDA vs CPU and torchvision, all dtypes, gradcheck, autocast, "
                 "empty inputs, the mixed-device error",
        ),
    ]
    runs = {}
    for method, config in METHODS.items():
        for precision, opts in PRECISIONS.items():
            run_dir = out / "runs" / f"{method}-{precision}"
            runs[method, precision] = run_dir
            steps.append(Step(
                f"train/{method}/{precision}",
                commands=[[PY, "projects/train_net.py", "--config-file", config, *TRAIN_OPTS, *opts,
                           "OUTPUT_DIR", str(run_dir)]],
                check=check_training(run_dir),
                note="20 iterations on CUDA, then the evaluation on shapes_val; losses finite",
            ))
            steps.append(Step(
                f"evaluate/{method}/{precision}", check=check_evaluation(run_dir),
                note=f"the evaluation at the end of train/{method}/{precision} (its metrics.json): segm/AP written",
            ))
    for method in METHODS:
        argv = [*SELF, "_predict", "cuda"]
        for precision in PRECISIONS:
            argv += [str(runs[method, precision]), "float16" if precision == "amp" else ""]
        steps.append(Step(f"predict/{method}", commands=[argv], check=check_predict,
                          note="instseg.engine.Predictor on CUDA from both checkpoints (the AMP one in float16)"))
    gpus = len(device["gpus"])
    for method, config in METHODS.items():
        steps.append(Step(
            f"ddp/{method}",
            commands=[[PY, "projects/train_net.py", "--config-file", config, "--num-gpus", "2", *TRAIN_OPTS,
                       "OUTPUT_DIR", str(out / "runs" / f"{method}-ddp")]],
            check=check_ddp,
            skip=None if gpus >= 2 else f"{gpus} CUDA device(s) here: 2-GPU DDP needs two",
            note="2-GPU DDP training (NCCL), the replicas' weights identical at the end",
        ))
    steps += [
        Step(
            "benchmark/speed",
            commands=[[PY, "-m", "benchmark", "speed", "--device", "cuda", "--repeats", "20", "--models", *SPEED_MODELS,
                       "--output", str(out)]],
            check=check_speed,
            note="latency ratios to Mask R-CNN R50-FPN at 800 x 1216, BlendMask-RT R50 (550) in FPS; writes speed_cuda.md",
        ),
        Step(
            "benchmark/roi-align",
            commands=[[PY, "-m", "benchmark", "roi-align", "--device", "cuda"]],
            dry_commands=[[PY, "-m", "benchmark", "roi-align", "--device", "cpu", "--rois", "8", "--channels", "4",
                           "--repeats", "1", "--threads", "1"]],
            check=check_roi_align(out / ("roi_align_cpu_dry_run.md" if dry_run else "roi_align_cuda.md")),
            note="our RoIAlign vs torchvision's CUDA RoIAlign, forward+backward",
        ),
        Step(
            "benchmark/blender",
            commands=[[PY, "-m", "benchmark", "blender", "--device", "cuda"]],
            check=check_blender(out / "blender_cuda.md"),
            note="the fused blender vs the plain composition on CUDA",
        ),
    ]
    return steps


def run_command(ctx: Context, argv: List[str], env: dict, timeout: int):
    """Runs argv from the repo root, its output streamed to the terminal and log.txt; returns (rc, output)."""
    ctx.say("$ " + " ".join(f"{k}={v}" for k, v in env.items()) + (" " if env else "") + shlex.join(argv))
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    watchdog = threading.Timer(timeout, proc.kill)  # a silent hang ends too
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            ctx.log.write(line)
            sys.stdout.write(line)
        rc = proc.wait()
    finally:
        watchdog.cancel()
    if rc == -signal.SIGKILL:
        ctx.say(f"[killed after {timeout} s]")
    ctx.log.flush()
    return rc, "".join(lines)


def run_step(ctx: Context, step: Step) -> dict:
    ctx.say(f"\n=== {step.name}: {step.note}")
    record = {"name": step.name, "note": step.note, "commands": [shlex.join(c) for c in step.commands],
              "env": step.env, "figures": {}}
    if step.skip:
        ctx.say(f"skipped: {step.skip}")
        return dict(record, status="skipped", reason=step.skip, seconds=0.0)
    commands = step.commands
    if ctx.dry_run:
        for argv in step.commands:
            ctx.say("would run: " + " ".join(f"{k}={v}" for k, v in step.env.items()) + (" " if step.env else "")
                    + shlex.join(argv))
        if not (step.dry_action or step.dry_commands is not None):  # nothing of it runs on a CPU
            if not step.commands and not step.action:
                ctx.say("would check: " + step.note)
            return dict(record, status="not run (dry run)", seconds=0.0)
        commands = step.dry_commands or []
    start, output = time.monotonic(), ""
    try:
        if step.action and (step.dry_action or not ctx.dry_run):
            record["figures"] = step.action(ctx)
            ctx.say(json.dumps(record["figures"], default=str))
        for argv in commands:
            rc, text = run_command(ctx, argv, {} if ctx.dry_run else step.env, step.timeout)
            output += text
            assert rc == 0, f"exit status {rc}: {shlex.join(argv)}"
        if step.check:
            record["figures"] = step.check(ctx, output) or {}
        status = "ran on CPU (dry run)" if ctx.dry_run else "passed"
    except Exception as e:  # a failed step is recorded, the next one runs
        status, record["error"] = "failed", f"{type(e).__name__}: {e}"
        ctx.say(f"FAILED: {record['error']}")
    record.update(status=status, seconds=round(time.monotonic() - start, 2))
    if ctx.dry_run and commands is not step.commands:
        record["dry_run_commands"] = [shlex.join(c) for c in commands]
    ctx.say(f"--- {step.name}: {status} in {record['seconds']:.1f} s")
    return record


def evaluate_goals(figures: dict) -> list:
    goals = []
    for key, op, threshold, text in GOALS:
        value = figures.get(key)
        met = None if value is None else (value <= threshold if op == "<=" else value >= threshold)
        goals.append({"goal": text, "figure": key, "threshold": f"{op} {threshold}",
                      "value": NOT_MEASURED if value is None else value,
                      "met": NOT_MEASURED if met is None else met})
    return goals


def _fmt(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summary_markdown(report: dict) -> str:
    device = report["device"]
    lines = [f"# GPU check ({report['mode']}), {report['started']}", "",
             f"torch {device['torch']} (CUDA {device['torch_cuda']}), GPUs: {', '.join(device['gpus']) or 'none'}"
             f", architecture {device['arch'] or 'n/a'}", "",
             "| step | status | seconds | figures / reason |", "|---|---|---|---|"]
    for s in report["steps"]:
        detail = s.get("error") or s.get("reason") or ", ".join(f"{k} {_fmt(v)}" for k, v in s["figures"].items()
                                                                 if not isinstance(v, (list, dict)))
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {detail} |")
    lines += ["", "| goal | value | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {_fmt(g['value'])} | {g['met']} |" for g in report["goals"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the output folder (created)")
    parser.add_argument("--dry-run", action="store_true", help="print every step's commands, run the CPU-cheap parts")
    parser.add_argument("--only", nargs="+", metavar="PREFIX", help="run only the steps whose names start so")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DETECTRON2_DATASETS", str(ROOT / "datasets"))  # the embedded data, as make demo
    device = describe_device()
    ctx = Context(out, args.dry_run, device)
    mode = "dry run" if args.dry_run else "cuda"
    ctx.say(f"GPU check ({mode}) into {out}")
    if not args.dry_run and not device["cuda_available"]:
        ctx.say("no CUDA device here: run it on a GPU machine, or with --dry-run")
        return 2
    steps = build_steps(out, device, args.dry_run)
    if args.only:
        steps = [s for s in steps if s.name.startswith(tuple(args.only))]
    report = {"issue": 29, "mode": mode, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device, "steps": []}
    start = time.monotonic()
    for step in steps:
        report["steps"].append(run_step(ctx, step))
        figures = {k: v for s in report["steps"] if s["status"] == "passed" for k, v in s["figures"].items()}
        report.update(seconds=round(time.monotonic() - start, 1), figures=figures, goals=evaluate_goals(figures),
                      failed=[s["name"] for s in report["steps"] if s["status"] == "failed"])
        # written after every step: a run cut short still leaves its results
        (out / "figures.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (out / "summary.md").write_text(summary_markdown(report))
    ctx.say(f"\n{summary_markdown(report)}")
    ctx.say(f"failed steps: {report['failed'] or 'none'}; total {report['seconds']:.0f} s; results in {out}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in INTERNAL:
        sys.path.insert(0, str(ROOT))
        INTERNAL[sys.argv[1]](sys.argv[2:])
    else:
        sys.exit(main())
