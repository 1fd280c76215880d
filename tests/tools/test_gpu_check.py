"""The GPU check (tools/gpu_check.sh, docs/gpu.md) in its CPU dry run, so that the script cannot rot
on machines without a GPU; the parsers of its benchmark figures; the requirements filter of
INSTSEG_SYSTEM_TORCH=1 make install; the Makefile's install recipe with and without the flag."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check, requirements = _load("gpu_check"), _load("requirements")

METHODS = ("maskrcnn", "centermask", "blendmask", "refinemask")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", str(ROOT / "tools/gpu_check.sh"), str(out), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, out


def test_dry_run_succeeds_and_writes_its_files(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("log.txt", "figures.json", "summary.md", "roi_align_cpu_dry_run.md"):
        assert (out / name).is_file(), name
    assert "=== benchmark/blender" in (out / "log.txt").read_text()


def test_dry_run_lists_every_step(dry_run):
    _, out = dry_run
    report = json.loads((out / "figures.json").read_text())
    assert report["mode"] == "dry run" and report["failed"] == []
    names = [s["name"] for s in report["steps"]]
    expected = ["environment", "build", "op-tests"]
    for method in METHODS:
        expected += [f"train/{method}/fp32", f"evaluate/{method}/fp32", f"train/{method}/amp", f"evaluate/{method}/amp"]
    expected += [f"predict/{m}" for m in METHODS] + [f"ddp/{m}" for m in METHODS]
    expected += ["benchmark/speed", "benchmark/roi-align", "benchmark/blender"]
    assert names == expected
    summary = (out / "summary.md").read_text()
    assert all(f"| {name} |" in summary for name in names)
    log = (out / "log.txt").read_text()
    assert all(f"=== {name}:" in log for name in names)


def test_dry_run_prints_the_gpu_commands(dry_run):
    _, out = dry_run
    steps = {s["name"]: s for s in json.loads((out / "figures.json").read_text())["steps"]}
    build = steps["build"]
    assert build["env"]["FORCE_CUDA"] == "1" and build["env"]["TORCH_CUDA_ARCH_LIST"]
    assert "build_ext --inplace" in build["commands"][0]
    assert "pytest tests/layers" in steps["op-tests"]["commands"][0]
    assert steps["op-tests"]["figures"]["collected_on_cpu"] > 0  # the collection ran on the CPU
    for method in METHODS:
        fp32, amp = steps[f"train/{method}/fp32"]["commands"][0], steps[f"train/{method}/amp"]["commands"][0]
        assert "projects/train_net.py --config-file" in fp32 and "MODEL.DEVICE cuda" in fp32 and "SOLVER.MAX_ITER 20" in fp32
        assert "SOLVER.AMP.ENABLED True" in amp and "SOLVER.AMP.ENABLED" not in fp32
        assert "tools/gpu_check.py _predict cuda" in steps[f"predict/{method}"]["commands"][0]
        assert f"{method}-amp float16" in steps[f"predict/{method}"]["commands"][0]
        assert steps[f"ddp/{method}"]["status"] == "skipped"  # no two GPUs here, and it says why
        assert "2-GPU DDP needs two" in steps[f"ddp/{method}"]["reason"]
        assert "--num-gpus 2" in steps[f"ddp/{method}"]["commands"][0]
    for sub in ("speed", "roi-align", "blender"):
        assert f"-m benchmark {sub} --device cuda" in steps[f"benchmark/{sub}"]["commands"][0]
    assert steps["benchmark/roi-align"]["status"] == "ran on CPU (dry run)"
    assert steps["benchmark/roi-align"]["figures"]["roi_align_speedup_min"] > 0


def test_dry_run_marks_every_goal_not_yet_measured(dry_run):
    _, out = dry_run
    report = json.loads((out / "figures.json").read_text())
    assert [g["figure"] for g in report["goals"]] == [key for key, *_ in gpu_check.GOALS]
    assert all(g["value"] == g["met"] == gpu_check.NOT_MEASURED for g in report["goals"])
    assert report["figures"] == {}  # a CPU dry run's numbers are no GPU figures


def test_without_cuda_and_without_dry_run_it_refuses(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(ROOT / "tools/gpu_check.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device here" in proc.stdout


def test_speed_figures_and_goals():
    printed = "\n".join(
        f"{name}: {{'latency_median': {seconds}, 'latency_p90': 0.1, 'parts': {{'backbone': 0.01}}, 'flops_error': 'x'}}"
        for name, seconds in zip(gpu_check.SPEED_MODELS, (0.05, 0.035, 0.0125, 0.025, 0.08))
    )
    figures = gpu_check.check_speed(None, "noise\n" + printed + "\n| table |")
    assert figures["latency_ratio/Mask R-CNN R50-FPN"] == 1.0
    assert figures["latency_ratio/BlendMask R50"] == pytest.approx(0.7)
    assert figures["fps/BlendMask RT R50 (550)"] == pytest.approx(80.0)
    figures.update(roi_align_speedup_min=0.9, blender_speedup=2.5)
    met = {g["figure"]: g["met"] for g in gpu_check.evaluate_goals(figures)}
    assert met == {"latency_ratio/BlendMask R50": True, "latency_ratio/CenterMask-Lite V-19": False,
                   "latency_ratio/RefineMask R50-FPN": False, "fps/BlendMask RT R50 (550)": True,
                   "roi_align_speedup_min": False, "blender_speedup": True}
    with pytest.raises(AssertionError, match="missing"):
        gpu_check.check_speed(None, printed.splitlines()[0])


def test_blender_and_roi_align_parsers(tmp_path):
    blender = "| fused | 1.0 | 1.7 |\nfused vs reference: 2.35x faster, 0.50x the peak memory\n"
    assert gpu_check.check_blender(tmp_path / "b.md")(None, blender) == {"blender_speedup": 2.35}
    assert (tmp_path / "b.md").read_text() == blender
    assert gpu_check.parse_roi_align("| 7x7 | 1.8 | 0.6 | 2.88x |\n| 14x14 | 2.0 | 0.5 | 3.89x |") == {
        "7x7": 2.88, "14x14": 3.89}
    with pytest.raises(AssertionError):
        gpu_check.check_blender(tmp_path / "c.md")(None, "no table")


def test_training_and_evaluation_checks(tmp_path):
    rows = [{"iteration": i, "total_loss": 2.0 - i / 10} for i in range(20)] + [{"iteration": 19, "segm/AP": 1.5}]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert gpu_check.check_training(tmp_path)(None, "")["iterations"] == 20
    assert gpu_check.check_evaluation(tmp_path)(None, "") == {"segm/AP": 1.5}
    (tmp_path / "metrics.json").write_text(json.dumps({"iteration": 0, "total_loss": float("nan")}))
    with pytest.raises(AssertionError, match="non-finite"):
        gpu_check.check_training(tmp_path)(None, "")


# --- INSTSEG_SYSTEM_TORCH=1 make install ---

def test_requirements_filter_drops_only_torch_and_torchvision():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    kept = requirements.without(lines, requirements.SYSTEM_TORCH)
    names = [requirements.requirement_name(line) for line in kept]
    assert "torch" not in names and "torchvision" not in names
    assert [n for n in names if n] == [n for n in map(requirements.requirement_name, lines) if n not in (None, "torch", "torchvision")]
    assert "# kept as installed: torch==" in "\n".join(kept)
    assert len(kept) == len(lines)  # every other line as it is
    assert {"numpy", "pycocotools", "fvcore", "setuptools", "pytest"} <= set(names)


def test_requirement_names():
    name = requirements.requirement_name
    assert name("Torch_Vision==0.29.1  # comment") == "torch-vision"
    assert name("faster-coco-eval==1.8.0  # Boundary AP") == "faster-coco-eval"
    assert name("torch[opt]>=2; python_version > '3'") == "torch"
    assert name("# torch==1") is None and name("   ") is None and name("--index-url x") is None
    assert requirements.without(["torch-2==1", "torch==2"], ["torch"]) == ["torch-2==1", "# kept as installed: torch==2"]


def test_requirements_cli(tmp_path):
    (tmp_path / "r.txt").write_text("torch==2\nnumpy==1\ntorchvision==3\n")
    out = subprocess.run([sys.executable, str(ROOT / "tools/requirements.py"), str(tmp_path / "r.txt"),
                          "--without", "torch", "torchvision"], capture_output=True, text=True, check=True).stdout
    assert out == "# kept as installed: torch==2\nnumpy==1\n# kept as installed: torchvision==3\n"


def _make_n(*args, **env):
    proc = subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, env=dict(os.environ, **env), capture_output=True,
                          text=True, check=True)
    return proc.stdout


def test_make_install_unchanged_without_the_flag():
    plan = _make_n("install", INSTSEG_SYSTEM_TORCH="", INSTSEG_WHEELHOUSE="")
    assert "-m venv  .venv" in plan and "--system-site-packages" not in plan
    assert "pip install -q -r requirements.txt" in plan
    assert ".venv/bin/python third_party/detectron2/install.py" in [line.strip() for line in plan.splitlines()]
    assert "PIP_NO_INDEX" not in plan and "touch .venv/.instseg-installed\n" in plan


def test_make_install_with_system_torch_skips_the_torch_pins_and_installs_the_rest():
    plan = _make_n("install", INSTSEG_SYSTEM_TORCH="1", INSTSEG_WHEELHOUSE="wh")
    assert "-m venv --system-site-packages .venv" in plan
    assert "tools/requirements.py requirements.txt --without torch torchvision > .venv/requirements-system-torch.txt" in plan
    assert "pip install -q -r .venv/requirements-system-torch.txt" in plan
    assert "pip install -q -r requirements.txt" not in plan
    wheelhouse = str(ROOT / "wh")
    assert f"PIP_NO_INDEX=1 PIP_FIND_LINKS={wheelhouse}" in plan
    assert f"third_party/detectron2/install.py --wheelhouse {wheelhouse}" in plan
    assert "--no-build-isolation -e ." in plan  # the extension, built against the kept torch
    # its own stamp: switching the flag reinstalls
    assert "touch .venv/.instseg-installed-system-torch" in plan and "rm -f .venv/.instseg-installed*" in plan


def test_make_wheelhouse_collects_the_detectron2_wheel():
    plan = _make_n("wheelhouse", "WHEELHOUSE=wh", "WHEELHOUSE_DEPS=0")
    assert "third_party/detectron2/install.py --wheelhouse wh --wheel-only" in plan and "pip wheel" not in plan
    assert "pip wheel -q -w wh -r wh/requirements.txt" in _make_n("wheelhouse", "WHEELHOUSE=wh")


def test_kernel_report_and_build_check():
    out = subprocess.run([sys.executable, str(ROOT / "tools/gpu_check.py"), "_kernels"], cwd=ROOT, capture_output=True,
                         text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1")).stdout
    assert sorted(line.rsplit(" ", 1)[0] for line in out.splitlines()) == ["instseg::blend CUDA", "instseg::roi_align CUDA"]
    assert gpu_check.check_build(None, "instseg::roi_align CUDA True\ninstseg::blend CUDA True\n") == {}
    for built in ("instseg::roi_align CUDA False\ninstseg::blend CUDA False", "instseg::roi_align CUDA True\ninstseg::blend CUDA False"):
        with pytest.raises(AssertionError):
            gpu_check.check_build(None, built)


def test_a_failed_step_is_recorded_and_the_next_one_runs(tmp_path):
    ctx = gpu_check.Context(tmp_path, dry_run=False, device={})
    fail = gpu_check.Step("fails", commands=[[sys.executable, "-c", "print('boom'); raise SystemExit(3)"]])
    check = gpu_check.Step("checks", commands=[[sys.executable, "-c", "print('fused vs reference: 3.00x faster')"]],
                           check=gpu_check.check_blender(tmp_path / "b.md"))
    skipped = gpu_check.Step("skipped", commands=[["false"]], skip="no reason to run")
    records = [gpu_check.run_step(ctx, step) for step in (fail, check, skipped)]
    assert [r["status"] for r in records] == ["failed", "passed", "skipped"]
    assert "exit status 3" in records[0]["error"] and records[1]["figures"] == {"blender_speedup": 3.0}
    assert records[2]["reason"] == "no reason to run"
    assert "boom" in (tmp_path / "log.txt").read_text()


def test_a_hanging_command_is_killed_at_its_timeout(tmp_path):
    ctx = gpu_check.Context(tmp_path, dry_run=False, device={})
    hang = gpu_check.Step("hangs", commands=[[sys.executable, "-c", "import time; time.sleep(60)"]], timeout=1)
    record = gpu_check.run_step(ctx, hang)
    assert record["status"] == "failed" and record["seconds"] < 30
    assert "killed after 1 s" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("precision", sorted(gpu_check.PRECISIONS))
@pytest.mark.parametrize("method", METHODS)
def test_the_training_options_are_accepted_by_each_config(method, precision):
    from instseg.engine import build_config

    cfg = build_config(gpu_check.METHODS[method], gpu_check.TRAIN_OPTS + gpu_check.PRECISIONS[precision])
    assert cfg.MODEL.DEVICE == "cuda" and cfg.SOLVER.MAX_ITER == 20 and cfg.SOLVER.AMP.ENABLED == (precision == "amp")
    assert cfg.SOLVER.IMS_PER_BATCH % 2 == 0  # the DDP step splits the batch over 2 GPUs


def test_only_runs_the_steps_named(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(ROOT / "tools/gpu_check.py"), str(tmp_path), "--dry-run", "--only",
                           "build", "ddp/"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = [s["name"] for s in json.loads((tmp_path / "figures.json").read_text())["steps"]]
    assert names == ["build"] + [f"ddp/{m}" for m in METHODS]
