"""The benchmark's markdown tables (speed, parts, VoVNet parameters, accuracy) and the
speed-vs-accuracy plot."""
import os
import platform

import torch

from instseg.data.shapes import SPLITS

from .accuracy import TEST_SPLIT
from .models import ACCURACY_MODELS, SPEED_MODELS, setting


def fmt_ratio(value, reference) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def _ratio_of(results, ref, key):
    return fmt_ratio(results[key], ref.get(key))


def speed_table(results: dict, args) -> str:
    """The speed subcommand's tables: per model its measurements and their ratios to Mask R-CNN, the
    speed-up of --autocast / --channels-last, the parts table and the VoVNet parameter table."""
    ref = results.get(next(iter(SPEED_MODELS)), {})  # ratios need the reference in the same run
    flags = (f" --autocast {args.autocast}" if args.autocast else "") + (" --channels-last" if args.channels_last else "")
    lines = [
        f"Measured by `python -m benchmark speed --device {args.device} --threads {args.threads} "
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
    if setting(args):
        lines += ["", f"{setting(args)} against float32 NCHW (each model in both, all taking turns in one process):", "",
                  f"| model | float32 NCHW latency (ms) | {setting(args)} latency (ms) | speed-up |", "|---|---|---|---|"]
        lines += [
            f"| {name} | {r['latency_default_median'] * 1e3:.0f} | {r['latency_median'] * 1e3:.0f} | "
            f"{r['latency_default_median'] / r['latency_median']:.2f}x |"
            for name, r in results.items()
        ]
    notes = [f"- {name}: FLOPs not counted ({r['flops_error']})" for name, r in results.items() if "flops_error" in r]
    table = parts_table(results, ref.get("latency_median"))
    return "\n".join(lines + ([""] + notes if notes else []) + ["", table, "", vovnet_param_table()])


def parts_table(results: dict, reference_latency=None) -> str:
    """Where each model's inference time goes (one extra inference with hooks) and, given Mask
    R-CNN's median latency, as a share of it: which part makes a model slower or faster than the
    reference."""
    share = "; in brackets, as a share of Mask R-CNN's median latency" if reference_latency else ""
    lines = [
        f"Where the time of one inference goes (ms{share}; "
        "roi_heads includes the parts listed after it, rest is the time outside the model's children's forward, "
        "parts under 1% of the model's time are left out):",
        "",
        "| model | parts |",
        "|---|---|",
    ]
    for name, r in results.items():
        total = sum(t for part, t in r["parts"].items() if "." not in part)  # rest included
        cells = [
            f"{part} {t * 1e3:.0f}" + (f" ({t / reference_latency:.2f}x)" if reference_latency else "")
            for part, t in r["parts"].items() if t >= 0.01 * total
        ]
        lines.append(f"| {name} | {' · '.join(cells)} |")
    return "\n".join(lines)


def vovnet_param_table() -> str:
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


def accuracy_table(rows: dict) -> str:
    ref = rows[next(iter(ACCURACY_MODELS))]
    lines = [
        f"Measured by `python -m benchmark accuracy` on {platform.machine()} "
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
            f"{m['inference_ms']:.0f} | {fmt_ratio(m['inference_ms'], ref['inference_ms'])} | {m['train_minutes']:.1f} |"
        )
    return "\n".join(lines)


def plot(accuracy: dict, path: str) -> None:
    """The speed-vs-accuracy plot of the accuracy rows, saved to `path`."""
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
