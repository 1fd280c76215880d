"""Side-by-side benchmark of the methods against Mask R-CNN R50-FPN, measured in one run.

Speed mode (default), per model on the same inputs: parameters, FLOPs (fvcore's counter through
detectron2.utils.analysis), inference latency (warm-up, then median and p90), peak memory of one
inference (growth of the peak RSS on CPU, torch.cuda.max_memory_allocated on GPU), and training
iteration time (forward + backward + SGD step on a synthetic batch of 2 images); each also as a ratio
to Mask R-CNN. A second table splits one inference's time by part (backbone, proposal generator, RoI
heads and their box, mask and semantic heads). The latencies are taken in one subprocess where the
models take turns, one inference each per round, so that a shared machine slowing down or speeding up
during the run moves every model alike and not the ones measured last. Every model runs the other
measurements in subprocesses of its own so that peaks do not mix: one the parts, FLOPs and training
step, another the memory (with glibc returning freed memory to the system at once, which slows
allocation and so would skew the times).

Models are randomly initialised (no weights can be downloaded here). So that every model runs its full
mask branch, score thresholds are set to 0: each outputs its maximum number of detections (100; 50 for
CenterMask, whose FCOS keeps 50 at test time; the table shows the count). With random weights and
frozen BatchNorm the backbones' activations blow up and collapse the proposals to a handful, so the
backbones use GroupNorm here (the same change for every model).

Accuracy mode (--accuracy): trains every *_shapes config on the embedded dataset with its (equal)
schedule through projects/train_net.py and collects mask, Boundary and box AP and the trained model's
inference time per image (detectron2's evaluator measures it). The AP that training reports is on
the 50 validation images, too few to tell apart models about 1 AP apart; the final models are also
evaluated on the 500 images of the test split, the numbers the table leads with and the plot shows
(the seed still moves a run by up to about 2 AP there). --accuracy-models retrains only some of
them (after a change to one method, say); the others' rows are read from their runs in --output.

With --autocast, inference (latency, parts, memory) runs under torch.autocast in that dtype; the
training step stays in float32. With --channels-last every model is built with MODEL.CHANNELS_LAST
(weights and feature maps in NHWC memory format), for everything measured. With either, the latency
process also times each model in the default setting (float32, NCHW) in the same turns, and a table
gives the speed-up.

Writes a markdown table to --output (speed_<device>.md, with _<dtype> after --autocast and
_channels_last after --channels-last; with --accuracy accuracy.md and accuracy.png, the
speed-vs-accuracy plot).

    python projects/benchmark.py                          # CPU latency etc., all models
    python projects/benchmark.py --device cuda --repeats 50
    python projects/benchmark.py --autocast bfloat16      # inference in mixed precision
    python projects/benchmark.py --channels-last          # NHWC weights and feature maps
    python projects/benchmark.py --accuracy               # trains the *_shapes configs (long)
    python projects/benchmark.py --accuracy --accuracy-models "BlendMask R18"
    python projects/benchmark.py --accuracy --accuracy-models   # no training: re-read, evaluate new models
"""
import argparse
import contextlib
import copy
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import OrderedDict

import torch

from instseg.data.shapes import SPLITS
from instseg.utils import PEAK_RSS_ENV, peak_memory_of, seconds_in_turns, synchronize

# name -> (config, test image size (H, W)); the first is the reference of the ratios
SPEED_MODELS = {
    "Mask R-CNN R50-FPN": ("configs/MaskRCNN/mask_rcnn_R_50_FPN_1x.yaml", (800, 1216)),
    "BlendMask R50": ("configs/BlendMask/R_50_1x.yaml", (800, 1216)),
    "BlendMask RT R50 (550)": ("configs/BlendMask/RT_R_50_4x_syncbn_shtw.yaml", (512, 736)),
    "CenterMask V-39": ("configs/CenterMask/centermask_V_39_eSE_FPN_ms_3x.yaml", (800, 1216)),
    "CenterMask-Lite V-19": ("configs/CenterMask/centermask_lite_V_19_eSE_FPN_ms_4x.yaml", (608, 928)),
    "RefineMask R50-FPN": ("configs/RefineMask/refinemask_R_50_FPN_1x.yaml", (800, 1216)),
    "RefineMask faster-better R50-FPN": ("configs/RefineMask/refinemask_faster_better_R_50_FPN_1x.yaml", (800, 1216)),
}
ACCURACY_MODELS = {
    "Mask R-CNN R18-FPN": "configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml",
    "BlendMask R18": "configs/BlendMask/R_18_shapes.yaml",
    "BlendMask R18 P2-P6": "configs/BlendMask/R_18_P2_shapes.yaml",
    "CenterMask-Lite V-19": "configs/CenterMask/centermask_lite_V_19_eSE_shapes.yaml",
    "RefineMask R18-FPN": "configs/RefineMask/refinemask_R_18_FPN_shapes.yaml",
    "RefineMask faster-better R18-FPN": "configs/RefineMask/refinemask_faster_better_R_18_FPN_shapes.yaml",
}
# the split of the table's low-noise numbers (evaluated once per trained model; sizes in SPLITS)
TEST_SPLIT = "shapes_test"
RANDOM_INIT = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.FCOS.INFERENCE_TH_TEST", "0.0",
               "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "GN", "MODEL.VOVNET.NORM", "GN"]


def _synthetic_batch(size, device, with_targets):
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(0)
    height, width = size
    batch = []
    for _ in range(2 if with_targets else 1):
        item = {"image": torch.randint(0, 256, (3, height, width), generator=g).float().to(device),
                "height": height, "width": width}
        if with_targets:
            xy = torch.rand(8, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
            wh = 32 + torch.rand(8, 2, generator=g) * 200
            boxes = torch.cat([xy, xy + wh], dim=1)
            masks = torch.zeros(8, height, width, dtype=torch.bool)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                m[y1:y2, x1:x2] = True
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(boxes)
            inst.gt_classes = torch.randint(0, 80, (8,), generator=g)
            inst.gt_masks = BitMasks(masks)
            item["instances"] = inst
        batch.append(item)
    return batch


class _ImageToBoxes(torch.nn.Module):
    """The model as a function of one image tensor, for fvcore's tracing FLOP counter (detectron2
    v0.6's own wrapper needs caffe2)."""

    def __init__(self, model, size):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, image):
        out = self.model([{"image": image, "height": self.size[0], "width": self.size[1]}])[0]["instances"]
        return out.pred_boxes.tensor, out.pred_masks


def _slash_free(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model without "/" in module names: fvcore splits trace scopes on "/", and
    VoVNet's centermask2-compatible names contain it (``stem_1/conv``)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        module._modules = OrderedDict((n.replace("/", "_"), m) for n, m in module._modules.items())
    return model


def _main_parts(model: torch.nn.Module) -> "OrderedDict[str, torch.nn.Module]":
    """The model's children and, for two-stage models, the RoI heads' children (the mask and
    semantic heads that tell the methods apart)."""
    parts = OrderedDict(model.named_children())
    if "roi_heads" in parts:
        parts.update((f"roi_heads.{n}", m) for n, m in parts["roi_heads"].named_children())
    return parts


def time_parts(model: torch.nn.Module, run, device: str = "cpu") -> "OrderedDict[str, float]":
    """Seconds spent in each of `_main_parts(model)` during one call of `run` (forward hooks; a part
    called several times is summed, roi_heads includes its own parts; parts not called are left out),
    and under "rest" the time outside the model's children: pre- and post-processing, and children
    called through methods other than forward (BlendMask's FCOS.detect and Blender.predict)."""
    seconds, handles = OrderedDict(), []
    for name, module in _main_parts(model).items():
        def enter(module, args, name=name):
            synchronize(device)
            seconds[name] = seconds.get(name, 0.0) - time.perf_counter()

        def leave(module, args, output, name=name):
            synchronize(device)
            seconds[name] += time.perf_counter()

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    start = time.perf_counter()
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    synchronize(device)
    seconds["rest"] = time.perf_counter() - start - sum(t for name, t in seconds.items() if "." not in name)
    return seconds


def _build(name, args):
    """The randomly initialised model in eval mode and its synthetic input batch."""
    from detectron2.modeling import build_model

    from instseg.engine import build_config, to_memory_format

    config, size = SPEED_MODELS[name]
    cfg = build_config(config, RANDOM_INIT + ["MODEL.DEVICE", args.device, "MODEL.CHANNELS_LAST", str(args.channels_last)])
    # Every model from the same seed: the parts RefineMask shares with Mask R-CNN (backbone, RPN, box
    # head) get the same weights, so both mask branches get the same proposals and detections, whose
    # sizes set the poolers' cost (adaptive sampling).
    torch.manual_seed(0)
    return to_memory_format(build_model(cfg), cfg).eval(), _synthetic_batch(size, args.device, with_targets=False)


@contextlib.contextmanager
def inference_mode(device, autocast=None):
    """No autograd and, when `autocast` names a dtype, torch.autocast on `device` in that dtype."""
    from instseg.engine import mixed_precision

    with torch.no_grad(), mixed_precision(device, autocast or ""):
        yield


def _infer(model, inputs, device, autocast):
    with inference_mode(device, autocast):
        return model(inputs)


def latency_stats(seconds):
    """Median and p90 of a list of seconds per call."""
    t = sorted(seconds)
    return {"latency_median": statistics.median(t), "latency_p90": t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]}


def _setting(args) -> str:
    """The inference setting of a run other than the default (float32, NCHW), "" for the default."""
    return " ".join(([args.autocast] if args.autocast else []) + (["channels-last"] if args.channels_last else []))


def measure_latencies(names, args):
    """Runs in a subprocess: the inference latency of every model, the models taking turns; with
    --autocast or --channels-last every model takes a turn in the default setting too (float32,
    NCHW: a copy of the model), for the speed-up."""
    torch.set_num_threads(args.threads)
    runs = {}
    for name in names:
        model, inputs = _build(name, args)
        runs[name] = functools.partial(_infer, model, inputs, args.device, args.autocast)
        if _setting(args):
            default = copy.deepcopy(model).to(memory_format=torch.contiguous_format) if args.channels_last else model
            runs[f"{name} (default)"] = functools.partial(_infer, default, inputs, args.device, None)
    seconds = seconds_in_turns(runs, args.warmup, args.repeats, args.device)
    results = {name: latency_stats(seconds[name]) for name in names}
    if _setting(args):
        for name in names:
            results[name]["latency_default_median"] = statistics.median(seconds[f"{name} (default)"])
    return results


def measure_one(name, args):
    """Runs in a subprocess: every measurement of one model but its latency; returns a dict."""
    from detectron2.utils.events import EventStorage
    from fvcore.nn import FlopCountAnalysis

    torch.set_num_threads(args.threads)
    model, inputs = _build(name, args)
    size = SPEED_MODELS[name][1]
    with inference_mode(args.device, args.autocast):
        for _ in range(args.warmup):
            model(inputs)
        if args.memory_only:
            return {"peak_memory": peak_memory_of(lambda: model(inputs), args.device)}
        result = {"params": sum(p.numel() for p in model.parameters()), "detections": len(model(inputs)[0]["instances"])}
        result["parts"] = time_parts(model, lambda: model(inputs), args.device)
        try:
            flops = FlopCountAnalysis(_ImageToBoxes(_slash_free(model), size), (inputs[0]["image"],))
            result["flops"] = flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
        except Exception as e:  # tracing is best effort; say why there is no number
            result["flops_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"

    model.train()
    batch = _synthetic_batch(size, args.device, with_targets=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step():
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    with EventStorage():
        step_times = seconds_in_turns({"train": train_step}, 1, args.train_iters, args.device)["train"]
    result["train_iter"] = statistics.median(step_times)
    return result


def _fmt_ratio(value, reference):
    return f"{value / reference:.2f}x" if reference else "-"


def _ratio_of(results, ref, key):
    return _fmt_ratio(results[key], ref.get(key))


def speed_table(results, args):
    ref = results.get(next(iter(SPEED_MODELS)), {})  # ratios need the reference in the same run
    flags = (f" --autocast {args.autocast}" if args.autocast else "") + (" --channels-last" if args.channels_last else "")
    lines = [
        f"Measured by `python projects/benchmark.py --device {args.device} --threads {args.threads} "
        f"--repeats {args.repeats}{flags}` on {platform.machine()} ({os.cpu_count()} cores"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else "")
        + f"), torch {torch.__version__}, random init, 1 image per inference.",
        "",
        "| model | input | params (M) | GFLOPs | detections | latency median (ms) | p90 (ms) | vs Mask R-CNN "
        "| peak mem (MB) | vs Mask R-CNN | train iter (s) | vs Mask R-CNN |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        size = SPEED_MODELS[name][1]
        flops = f"{r['flops'] / 1e9:.1f}" if "flops" in r else "n/a"
        lines.append(
            f"| {name} | {size[0]}x{size[1]} | {r['params'] / 1e6:.1f} | {flops} | {r['detections']} | {r['latency_median'] * 1e3:.0f} | "
            f"{r['latency_p90'] * 1e3:.0f} | {_ratio_of(r, ref, 'latency_median')} | "
            f"{r['peak_memory'] / 2**20:.0f} | {_ratio_of(r, ref, 'peak_memory')} | "
            f"{r['train_iter']:.2f} | {_ratio_of(r, ref, 'train_iter')} |"
        )
    if _setting(args):
        lines += ["", f"{_setting(args)} against float32 NCHW (each model in both, all taking turns in one process):", "",
                  f"| model | float32 NCHW latency (ms) | {_setting(args)} latency (ms) | speed-up |", "|---|---|---|---|"]
        lines += [
            f"| {name} | {r['latency_default_median'] * 1e3:.0f} | {r['latency_median'] * 1e3:.0f} | "
            f"{r['latency_default_median'] / r['latency_median']:.2f}x |"
            for name, r in results.items()
        ]
    notes = [f"- {name}: FLOPs not counted ({r['flops_error']})" for name, r in results.items() if "flops_error" in r]
    return "\n".join(lines + ([""] + notes if notes else []) + ["", parts_table(results, ref), "", vovnet_param_table()])


def parts_table(results, ref):
    """Where each model's inference time goes (one extra inference with hooks), as a share of Mask
    R-CNN's whole latency: which part makes a model slower or faster than the reference."""
    lines = [
        "Where the time of one inference goes (ms; in brackets, as a share of Mask R-CNN's median latency; "
        "roi_heads includes the parts listed after it, rest is the time outside the model's children's forward, "
        "parts under 1% of the model's time are left out):",
        "",
        "| model | parts |",
        "|---|---|",
    ]
    for name, r in results.items():
        total = sum(t for part, t in r["parts"].items() if "." not in part)  # rest included
        cells = [
            f"{part} {t * 1e3:.0f}" + (f" ({t / ref['latency_median']:.2f}x)" if ref else "")
            for part, t in r["parts"].items() if t >= 0.01 * total
        ]
        lines.append(f"| {name} | {' · '.join(cells)} |")
    return "\n".join(lines)


def vovnet_param_table():
    """Backbone-only parameter counts, comparable with centermask2's published ones."""
    from centermask import VOVNET_SPECS, VoVNet

    published = {"V-19-slim-dw-eSE": "1.8", "V-19-slim-eSE": "3.1", "V-19-eSE": "11.2"}
    lines = [
        "| VoVNet backbone | params (M), ours | + a 1000-class ImageNet classifier | centermask2 README |",
        "|---|---|---|---|",
    ]
    for name, spec in VOVNET_SPECS.items():
        count = sum(p.numel() for p in VoVNet(spec, 3, ["stage5"]).parameters())
        classifier = spec.stage_out_ch[-1] * 1000 + 1000
        lines.append(f"| {name} | {count / 1e6:.2f} | {(count + classifier) / 1e6:.2f} | {published.get(name, '-')} |")
    return "\n".join(lines)


def _last_metrics(output_dir):
    metrics = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            # metrics.json writes NaN (no ground truth of a size) as null
            metrics.update({
                k: float("nan") if v is None else v for k, v in row.items() if k.startswith(("segm/", "bbox/", "boundary/"))
            })
    return metrics


def _inference_seconds_per_image(output_dir):
    """detectron2's evaluator logs the model's pure compute time per image (batch size 1)."""
    with open(os.path.join(output_dir, "log.txt")) as f:
        times = re.findall(r"Total inference pure compute time: .*?\(([0-9.]+) s / iter per device", f.read())
    return float(times[-1])


def _log_minutes(output_dir):
    """Minutes from the first to the last line of a run's log.txt (training + evaluation)."""
    with open(os.path.join(output_dir, "log.txt")) as f:
        stamps = re.findall(r"^\[(\d\d/\d\d \d\d:\d\d:\d\d)\]", f.read(), flags=re.M)
    first, last = (time.strptime(s, "%m/%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return (time.mktime(last) - time.mktime(first)) / 60


def final_evaluation_dir(out, dataset):
    """The OUTPUT_DIR of evaluate_final_model's evaluation of the run in `out` on `dataset`."""
    return os.path.join(out, dataset)


def evaluate_final_model(out, dataset=TEST_SPLIT):
    """Evaluate the final model of the run in `out`, built from the run's own config.yaml, on
    `dataset`; the metrics are kept in <out>/<dataset>/metrics.json and evaluated again only when
    the model is newer."""
    from detectron2.evaluation.testing import flatten_results_dict

    from instseg.checkpoint import Checkpointer
    from instseg.engine import Trainer, build_config

    weights = os.path.join(out, "model_final.pth")
    cache = os.path.join(final_evaluation_dir(out, dataset), "metrics.json")
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(weights):
        with open(cache) as f:
            return json.load(f)
    cfg = build_config(
        os.path.join(out, "config.yaml"), ["DATASETS.TEST", f"('{dataset}',)", "OUTPUT_DIR", os.path.dirname(cache)]
    )
    model = Trainer.build_model(cfg)
    Checkpointer(model).load(weights)
    metrics = flatten_results_dict(Trainer.test(cfg, model))  # the keys of a run's metrics.json
    with open(cache, "w") as f:
        json.dump(metrics, f)
    return metrics


def run_accuracy(args):
    """Train and evaluate the *_shapes configs named by --accuracy-models, one after the other, each
    with its own schedule (all equal: 400 iterations of 4 images). The other models' rows come from
    their finished runs in --output; a model with none is left out (and said so)."""
    rows = {}
    for name, config in ACCURACY_MODELS.items():
        out = os.path.join(args.output, "accuracy", os.path.splitext(os.path.basename(config))[0])
        if name in args.accuracy_models:
            shutil.rmtree(out, ignore_errors=True)  # a fresh run: detectron2 appends to log.txt and metrics.json
            subprocess.run([sys.executable, "projects/train_net.py", "--config-file", config, "OUTPUT_DIR", out], check=True)
        elif not os.path.exists(os.path.join(out, "metrics.json")):
            print(f"{name}: left out of the table, no finished run in {out} (add it to --accuracy-models)", flush=True)
            continue
        rows[name] = dict(
            _last_metrics(out),
            test=evaluate_final_model(out),
            train_minutes=_log_minutes(out),
            inference_ms=_inference_seconds_per_image(out) * 1e3,
        )
    return rows


def accuracy_table(rows):
    ref = rows[next(iter(ACCURACY_MODELS))]
    lines = [
        f"Measured by `python projects/benchmark.py --accuracy` on {platform.machine()} "
        f"({os.cpu_count()} cores), torch {torch.__version__}: each `*_shapes.yaml` config trained from "
        f"scratch on the embedded data (400 iterations x 4 images, 256 px), its final model evaluated on "
        f"the {TEST_SPLIT} split ({SPLITS['test'][0]} images) and, during training, on the "
        f"{SPLITS['val'][0]} validation images; "
        f"inference time per image from detectron2's evaluator on the validation images.",
        "",
        "| model (config) | mask AP | Boundary AP | box AP | val mask AP | val Boundary AP | val box AP "
        "| inference (ms / image) | vs Mask R-CNN | train + eval (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        config = ACCURACY_MODELS[name]
        test = m["test"]
        lines.append(
            f"| {name} (`{config}`) | {test['segm/AP']:.1f} | {test['boundary/AP']:.1f} | {test['bbox/AP']:.1f} | "
            f"{m['segm/AP']:.1f} | {m['boundary/AP']:.1f} | {m['bbox/AP']:.1f} | "
            f"{m['inference_ms']:.0f} | {_fmt_ratio(m['inference_ms'], ref['inference_ms'])} | {m['train_minutes']:.1f} |"
        )
    return "\n".join(lines)


def plot(accuracy, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for metric, marker in (("segm/AP", "o"), ("boundary/AP", "s")):
        xs = [m["inference_ms"] for m in accuracy.values()]
        ys = [m["test"][metric] for m in accuracy.values()]
        ax.scatter(xs, ys, marker=marker, label={"segm/AP": "mask AP", "boundary/AP": "Boundary AP"}[metric])
    for name, m in accuracy.items():
        ax.annotate(name, (m["inference_ms"], m["test"]["segm/AP"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("CPU inference time per 256 px image (ms)")
    ax.set_ylabel(f"AP on the embedded {TEST_SPLIT} split")
    ax.set_title("speed vs accuracy, equal training schedule")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _measure_in_subprocess(models, args, extra_args, env):
    cmd = [sys.executable, __file__, "--one", *models, *extra_args] + [
        f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("device", "threads", "warmup", "repeats", "train_iters")
    ] + ([f"--autocast={args.autocast}"] if args.autocast else []) + (["--channels-last"] if args.channels_last else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{', '.join(models)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-iters", type=int, default=2)
    parser.add_argument(
        "--autocast", choices=["bfloat16", "float16"],
        help="run inference (not the training step) under torch.autocast in this dtype",
    )
    parser.add_argument(
        "--channels-last", action="store_true",
        help="build every model with MODEL.CHANNELS_LAST (NHWC weights and feature maps)",
    )
    parser.add_argument("--models", nargs="+", default=list(SPEED_MODELS), choices=list(SPEED_MODELS))
    parser.add_argument("--accuracy", action="store_true", help="train the *_shapes configs instead")
    parser.add_argument(
        "--accuracy-models", nargs="*", default=list(ACCURACY_MODELS), choices=list(ACCURACY_MODELS),
        help="with --accuracy: the models to (re)train; the others are read from their runs in --output "
        "(given with no names: none is retrained)",
    )
    parser.add_argument("--output", default="output/benchmark")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_latencies(args.one, args) if args.latency_only else measure_one(args.one[0], args)))
        return
    os.makedirs(args.output, exist_ok=True)
    if args.accuracy:
        rows = run_accuracy(args)
        table = accuracy_table(rows)
        plot(rows, os.path.join(args.output, "accuracy.png"))
        name = "accuracy.md"
    else:
        results = _measure_in_subprocess(args.models, args, ["--latency-only"], os.environ)
        for model in args.models:
            results[model].update(_measure_in_subprocess([model], args, [], os.environ))
            # glibc tuned for measuring the peak (PEAK_RSS_ENV) makes every large allocation a system
            # call: only the memory is measured that way, in a process of its own
            results[model].update(_measure_in_subprocess([model], args, ["--memory-only"], dict(os.environ, **PEAK_RSS_ENV)))
            print(f"{model}: {results[model]}", flush=True)
        table = speed_table(results, args)
        name = f"speed_{args.device}{'_' + args.autocast if args.autocast else ''}{'_channels_last' if args.channels_last else ''}.md"
    with open(os.path.join(args.output, name), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
