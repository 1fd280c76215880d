"""ONNX Runtime against eager PyTorch: each model exported to ONNX (projects/export.py's path), then
its latency in ONNX Runtime and in eager PyTorch, taken in turns in one run, their ratio and the
ONNX file's size.

Both sides go from the same resized image tensor to full-size detections: eager runs the detectron2
model (its own postprocessing pastes the masks), ONNX Runtime runs the file and then the same
postprocessing as instseg.export's predictors. Models are randomly initialised as in `speed`.

    python -m benchmark export                                  # every model with an export path
    python -m benchmark export --models "Mask R-CNN R50-FPN" --repeats 3
"""
import argparse
import os
import statistics
import tempfile

import torch

from .models import SPEED_MODELS, build, infer
from .timing import seconds_in_turns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(SPEED_MODELS), choices=list(SPEED_MODELS))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of PyTorch and of ONNX Runtime")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="also write the table to this markdown file")


def onnx_session(path: str, threads: int):
    """An ONNX Runtime CPU session of `path` with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def measure(name: str, args: argparse.Namespace, workdir: str) -> dict:
    """The row of model `name`: both latencies (median ms), their ratio, the file size, or why the
    model could not be exported."""
    from instseg.export import ExportedPredictor, UnsupportedExportError, build_export_module, export

    model, batch = build(name, argparse.Namespace(device="cpu", channels_last=False))
    image, height, width = batch[0]["image"], batch[0]["height"], batch[0]["width"]
    try:
        module = build_export_module(model)
        path = os.path.join(workdir, "model.onnx")
        export(module, "onnx", path, image)
    except UnsupportedExportError as e:
        return {"model": name, "error": str(e).splitlines()[0][:200]}
    session = onnx_session(path, args.threads)
    output_names = [o.name for o in session.get_outputs()]
    feed = {session.get_inputs()[0].name: image.numpy()}

    def onnxruntime_run():
        outputs = dict(zip(output_names, (torch.from_numpy(v) for v in session.run(output_names, feed))))
        return ExportedPredictor.postprocess(outputs, tuple(image.shape[-2:]), height, width)

    runs = {"eager": lambda: infer(model, batch, "cpu")[0]["instances"], "onnxruntime": onnxruntime_run}
    times = seconds_in_turns(runs, args.warmup, args.repeats, "cpu")
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {
        "model": name, "size": f"{height} x {width}", "eager_ms": ms["eager"], "onnxruntime_ms": ms["onnxruntime"],
        "ratio": ms["onnxruntime"] / ms["eager"], "onnx_mb": os.path.getsize(path) / 2**20,
        "detections": (len(runs["eager"]()), len(onnxruntime_run())),
    }


def table(rows, args: argparse.Namespace) -> str:
    lines = [
        f"ONNX Runtime (CPU provider) against eager PyTorch, {args.threads} threads each, median of "
        f"{args.repeats} taken in turns; ratio = ONNX Runtime / eager (< 1: ONNX Runtime is faster).",
        "",
        "| model | image | eager (ms) | ONNX Runtime (ms) | ratio | ONNX file (MB) | detections eager / ORT |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | not exported: {r['error']} | | | | | |")
        else:
            lines.append(
                f"| {r['model']} | {r['size']} | {r['eager_ms']:.0f} | {r['onnxruntime_ms']:.0f} | {r['ratio']:.2f}x | "
                f"{r['onnx_mb']:.1f} | {r['detections'][0]} / {r['detections'][1]} |"
            )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as workdir:
            rows.append(measure(name, args, workdir))
        print(rows[-1], flush=True)
    text = table(rows, args)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"Written by `python -m benchmark export`.\n\n{text}")
