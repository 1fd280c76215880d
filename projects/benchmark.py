"""Side-by-side benchmark of the methods against Mask R-CNN R50-FPN, measured in one run.

Speed mode (default), per model on the same inputs: parameters, FLOPs (fvcore's counter through
detectron2.utils.analysis), inference latency (warm-up, then median and p90), peak memory of one
inference (growth of the peak RSS on CPU, torch.cuda.max_memory_allocated on GPU), and training
iteration time (forward + backward + SGD step on a synthetic batch of 2 images); each also as a ratio
to Mask R-CNN. Every model runs in its own subprocess so that peaks do not mix.

Models are randomly initialised (no weights can be downloaded here). So that every model runs its full
mask branch, score thresholds are set to 0: each outputs its maximum number of detections (100; 50 for
CenterMask, whose FCOS keeps 50 at test time; the table shows the count). With random weights and
frozen BatchNorm the backbones' activations blow up and collapse the proposals to a handful, so the
backbones use GroupNorm here (the same change for every model).

Accuracy mode (--accuracy): trains every *_shapes config on the embedded dataset with its (equal)
schedule through projects/train_net.py and collects box and mask AP.

Writes a markdown table (and with --accuracy a speed-vs-accuracy plot) to --output.

    python projects/benchmark.py                          # CPU latency etc., all models
    python projects/benchmark.py --device cuda --repeats 50
    python projects/benchmark.py --accuracy               # trains the *_shapes configs (long)
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from instseg.utils import PEAK_RSS_ENV

# name -> (config, test image size (H, W)); the first is the reference of the ratios
SPEED_MODELS = {
    "Mask R-CNN R50-FPN": ("configs/MaskRCNN/mask_rcnn_R_50_FPN_1x.yaml", (800, 1216)),
    "BlendMask R50": ("configs/BlendMask/R_50_1x.yaml", (800, 1216)),
    "BlendMask RT R50 (550)": ("configs/BlendMask/RT_R_50_4x_syncbn_shtw.yaml", (512, 736)),
    "CenterMask V-39": ("configs/CenterMask/centermask_V_39_eSE_FPN_ms_3x.yaml", (800, 1216)),
    "CenterMask-Lite V-19": ("configs/CenterMask/centermask_lite_V_19_eSE_FPN_ms_4x.yaml", (608, 928)),
    "RefineMask R50-FPN": ("configs/RefineMask/refinemask_R_50_FPN_1x.yaml", (800, 1216)),
}
ACCURACY_MODELS = {
    "Mask R-CNN R18-FPN": "configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml",
    "BlendMask R18": "configs/BlendMask/R_18_shapes.yaml",
    "CenterMask-Lite V-19": "configs/CenterMask/centermask_lite_V_19_eSE_shapes.yaml",
    "RefineMask R18-FPN": "configs/RefineMask/refinemask_R_18_FPN_shapes.yaml",
}
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


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure_one(name, args):
    """Runs in a subprocess: every measurement of one model; returns a dict."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from fvcore.nn import FlopCountAnalysis

    from instseg.engine import build_config
    from instseg.utils import peak_memory_of

    torch.set_num_threads(args.threads)
    config, size = SPEED_MODELS[name]
    cfg = build_config(config, RANDOM_INIT + ["MODEL.DEVICE", args.device])
    model = build_model(cfg).eval()
    inputs = _synthetic_batch(size, args.device, with_targets=False)
    result = {"params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        for _ in range(args.warmup):
            model(inputs)
        times = []
        for _ in range(args.repeats):
            _sync(args.device)
            start = time.perf_counter()
            outputs = model(inputs)
            _sync(args.device)
            times.append(time.perf_counter() - start)
        result["detections"] = len(outputs[0]["instances"])
        result["peak_memory"] = peak_memory_of(lambda: model(inputs), args.device)
        try:
            flops = FlopCountAnalysis(_ImageToBoxes(model, size), (inputs[0]["image"],))
            result["flops"] = flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
        except Exception as e:  # tracing is best effort; say why there is no number
            result["flops_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    times.sort()
    result["latency_median"] = statistics.median(times)
    result["latency_p90"] = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]

    model.train()
    batch = _synthetic_batch(size, args.device, with_targets=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    step_times = []
    with EventStorage():
        for i in range(1 + args.train_iters):
            _sync(args.device)
            start = time.perf_counter()
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            _sync(args.device)
            if i > 0:
                step_times.append(time.perf_counter() - start)
    result["train_iter"] = statistics.median(step_times)
    return result


def _fmt_ratio(value, reference):
    return f"{value / reference:.2f}x" if reference else "-"


def speed_table(results, args):
    ref = results[next(iter(SPEED_MODELS))]
    lines = [
        f"Measured by `python projects/benchmark.py --device {args.device} --threads {args.threads} "
        f"--repeats {args.repeats}` on {platform.machine()} ({os.cpu_count()} cores"
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
            f"{r['latency_p90'] * 1e3:.0f} | {_fmt_ratio(r['latency_median'], ref['latency_median'])} | "
            f"{r['peak_memory'] / 2**20:.0f} | {_fmt_ratio(r['peak_memory'], ref['peak_memory'])} | "
            f"{r['train_iter']:.2f} | {_fmt_ratio(r['train_iter'], ref['train_iter'])} |"
        )
    notes = [f"- {name}: FLOPs not counted ({r['flops_error']})" for name, r in results.items() if "flops_error" in r]
    return "\n".join(lines + ([""] + notes if notes else []) + ["", vovnet_param_table()])


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
            metrics.update({k: v for k, v in row.items() if k.startswith(("segm/", "bbox/"))})
    return metrics


def run_accuracy(args):
    rows = {}
    for name, config in ACCURACY_MODELS.items():
        out = os.path.join(args.output, "accuracy", os.path.splitext(os.path.basename(config))[0])
        start = time.time()
        subprocess.run([sys.executable, "projects/train_net.py", "--config-file", config, "OUTPUT_DIR", out], check=True)
        rows[name] = dict(_last_metrics(out), train_minutes=(time.time() - start) / 60)
    return rows


def accuracy_table(rows):
    lines = ["| model (embedded data, equal schedule) | mask AP | box AP | train + eval (min) |", "|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m.get('segm/AP', float('nan')):.1f} | {m.get('bbox/AP', float('nan')):.1f} | {m['train_minutes']:.1f} |")
    return "\n".join(lines)


def plot(accuracy, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in accuracy.items():
        ax.scatter(m["train_minutes"], m.get("segm/AP", 0))
        ax.annotate(name, (m["train_minutes"], m.get("segm/AP", 0)), fontsize=8)
    ax.set_xlabel("train + eval time on the embedded data (min)")
    ax.set_ylabel("mask AP (embedded data)")
    ax.set_title("speed vs accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-iters", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(SPEED_MODELS), choices=list(SPEED_MODELS))
    parser.add_argument("--accuracy", action="store_true", help="train the *_shapes configs instead")
    parser.add_argument("--output", default="output/benchmark")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args)))
        return
    os.makedirs(args.output, exist_ok=True)
    if args.accuracy:
        rows = run_accuracy(args)
        table = accuracy_table(rows)
        plot(rows, os.path.join(args.output, "accuracy.png"))
        name = "accuracy.md"
    else:
        results = {}
        for model in args.models:
            cmd = [sys.executable, __file__, "--one", model] + [
                f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("device", "threads", "warmup", "repeats", "train_iters")
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **PEAK_RSS_ENV))
            if proc.returncode != 0:
                raise RuntimeError(f"{model} failed:\n{proc.stderr[-3000:]}")
            results[model] = json.loads(proc.stdout.splitlines()[-1])
            print(f"{model}: {results[model]}", flush=True)
        table = speed_table(results, args)
        name = f"speed_{args.device}.md"
    with open(os.path.join(args.output, name), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
