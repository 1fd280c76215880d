"""This project's RoIAlign op against torchvision.ops.roi_align, forward + backward.

Both ops run on the same inputs in the same process; prints the median time of each and the ratio
torchvision / ours (> 1 means ours is faster).

    python -m benchmark roi-align                       # CPU, 2 threads, 512 RoIs x 256 ch
    python -m benchmark roi-align --channels-last --forward-only
    python -m benchmark roi-align --device cuda
"""
import argparse
import statistics

import torch
import torchvision

from instseg.layers import roi_align, rois_from_indices

from .timing import seconds_in_turns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--rois", type=int, default=512)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--channels-last", action="store_true", help="the feature map in channels-last memory format")
    parser.add_argument("--forward-only", action="store_true", help="time inference: no backward")


def make_inputs(num_rois, channels, device, seed=0):
    """A stride-4 FPN level of an 800 x 1216 image (2 images) and boxes of 16 to 400 pixels."""
    g = torch.Generator().manual_seed(seed)
    height, width, stride = 800, 1216, 4
    features = torch.randn(2, channels, height // stride, width // stride, generator=g)
    size = 16 + torch.rand(num_rois, 2, generator=g) * 384
    xy = torch.rand(num_rois, 2, generator=g) * (torch.tensor([width, height]) - size)
    image_inds = torch.randint(0, 2, (num_rois,), generator=g)
    rois = rois_from_indices(image_inds, torch.cat([xy, xy + size], dim=1))
    return features.to(device), rois.to(device), 1.0 / stride


def time_op(fn, features, rois, scale, output_size, repeats, backward=True, warmup=2):
    """Median seconds of one call of the RoIAlign `fn` (and its backward, with `backward`)."""
    features = features.detach().requires_grad_(backward)

    def run():
        features.grad = None  # a fresh gradient each call, as in training, not an accumulated one
        out = fn(features, rois, output_size, scale, 0, True)
        if backward:
            out.backward(torch.ones_like(out))

    return statistics.median(seconds_in_turns({"op": run}, warmup, repeats, str(features.device))["op"])


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    features, rois, scale = make_inputs(args.rois, args.channels, args.device)
    if args.channels_last:
        features = features.contiguous(memory_format=torch.channels_last)

    print(f"RoIAlign {'forward' if args.forward_only else 'forward+backward'}, {args.rois} RoIs x "
          f"{args.channels} channels, feature map {tuple(features.shape)}"
          f"{' channels-last' if args.channels_last else ''}, sampling_ratio 0, aligned, device "
          f"{args.device}, {args.threads} threads, median of {args.repeats}")
    print("| output | torchvision (ms) | instseg (ms) | speed-up |")
    print("|---|---|---|---|")
    for output_size in (7, 14):
        timing = (features, rois, scale, output_size, args.repeats, not args.forward_only)
        ref = time_op(torchvision.ops.roi_align, *timing)
        ours = time_op(roi_align, *timing)
        print(f"| {output_size}x{output_size} | {ref * 1e3:.1f} | {ours * 1e3:.1f} | {ref / ours:.2f}x |")
