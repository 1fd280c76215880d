"""The fused blender op (csrc/blender) against the plain PyTorch blender (torchvision roi_align +
F.interpolate + softmax + weighted sum), forward + backward.

Both run on the same inputs: 100 boxes on one image's bases (K = 4, stride 4 of an 800 x 1216 image),
R = 56, attentions A = 14. Time is the median of repeats in this process, the variants taking
turns. Peak memory is measured in a fresh subprocess per variant (benchmark.worker): on CPU as the
peak resident set size during one forward + backward (Linux VmHWM, reset just before) minus the
resident size before it, with glibc returning every block over 64 KiB to the system when freed
(MALLOC_MMAP_THRESHOLD_) so that the peak follows live memory; on GPU as the growth of
torch.cuda.max_memory_allocated. Ratios are reference / fused.

    python -m benchmark blender                         # CPU, 2 threads
    python -m benchmark blender --device cuda
"""
import argparse
import os
import statistics

import torch

from instseg.layers import blend, blend_reference, rois_from_indices

from .timing import PEAK_RSS_ENV, peak_memory_of, seconds_in_turns
from .worker import run_worker

VARIANTS = {"fused": blend, "reference": blend_reference}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9)


def make_inputs(num_boxes, device, seed=0):
    """Bases (1, 4, 200, 304), RoIs (num_boxes, 5) of 32 to 352 pixels and attentions
    (num_boxes, 4, 14, 14)."""
    g = torch.Generator().manual_seed(seed)
    height, width, num_bases, attn = 800, 1216, 4, 14
    bases = torch.randn(1, num_bases, height // 4, width // 4, generator=g)
    size = 32 + torch.rand(num_boxes, 2, generator=g) * 320
    xy = torch.rand(num_boxes, 2, generator=g) * (torch.tensor([width, height]) - size)
    rois = rois_from_indices(torch.zeros(num_boxes), torch.cat([xy, xy + size], dim=1))
    attns = torch.randn(num_boxes, num_bases, attn, attn, generator=g)
    return bases.to(device), rois.to(device), attns.to(device)


def step(fn, bases, rois, attns):
    bases = bases.detach().requires_grad_(True)
    attns = attns.detach().requires_grad_(True)
    masks = fn(bases, rois, attns, 0.25, 56, 1, True, "bilinear")
    masks.backward(torch.ones_like(masks))


def time_variants(inputs, repeats, device, warmup=3):
    """Median seconds of each variant's step. The variants take turns (seconds_in_turns). This does
    not remove the run-to-run spread of the fused op with two threads on a shared 2-core VM (see the
    README)."""
    runs = {name: lambda fn=fn: step(fn, *inputs) for name, fn in VARIANTS.items()}
    return {name: statistics.median(t) for name, t in seconds_in_turns(runs, warmup, repeats, device).items()}


def peak_memory_bytes(variant, args) -> int:
    """Runs in a subprocess so that an earlier variant's high-water mark does not hide this one's."""
    torch.set_num_threads(args.threads)
    bases, rois, attns = inputs = make_inputs(args.boxes, args.device)
    step(VARIANTS[variant], bases, rois[:1], attns[:1])  # initialise the libraries first
    return peak_memory_of(lambda: step(VARIANTS[variant], *inputs), args.device)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    inputs = make_inputs(args.boxes, args.device)
    seconds = time_variants(inputs, args.repeats, args.device)
    memory = {}
    for name in VARIANTS:
        argv = ["blender-memory", name, "--device", args.device, "--threads", str(args.threads), "--boxes", str(args.boxes)]
        memory[name] = run_worker(argv, dict(os.environ, **PEAK_RSS_ENV))
    print(f"Blender forward+backward, {args.boxes} boxes, K=4, R=56, A=14, device {args.device}, "
          f"{args.threads} threads, median of {args.repeats}")
    print("| blender | time (ms) | peak memory (MB) |")
    print("|---|---|---|")
    for name in VARIANTS:
        print(f"| {name} | {seconds[name] * 1e3:.1f} | {memory[name] / 2**20:.1f} |")
    print(f"fused vs reference: {seconds['reference'] / seconds['fused']:.2f}x faster, "
          f"{memory['fused'] / max(memory['reference'], 1):.2f}x the peak memory")
