"""Where the time of one inference goes: the model's parts (backbone, proposal generator, RoI heads
and their box, mask and semantic heads) timed by forward hooks.

    python -m benchmark parts                           # every model, CPU
    python -m benchmark parts --models "RefineMask R50-FPN" --channels-last
"""
import argparse
import time
from collections import OrderedDict

import torch

from .models import SPEED_MODELS, add_model_options, build, inference_mode
from .timing import synchronize


def main_parts(model: torch.nn.Module) -> "OrderedDict[str, torch.nn.Module]":
    """The model's children and, for two-stage models, the RoI heads' children (the mask and
    semantic heads that tell the methods apart)."""
    parts = OrderedDict(model.named_children())
    if "roi_heads" in parts:
        parts.update((f"roi_heads.{n}", m) for n, m in parts["roi_heads"].named_children())
    return parts


def time_parts(model: torch.nn.Module, run, device: str = "cpu") -> "OrderedDict[str, float]":
    """Seconds spent in each of `main_parts(model)` during one call of `run` (forward hooks; a part
    called several times is summed, roi_heads includes its own parts; parts not called are left out),
    and under "rest" the time outside the model's children: pre- and post-processing, and children
    called through methods other than forward (BlendMask's FCOS.detect and Blender.predict)."""
    seconds, handles = OrderedDict(), []
    for name, module in main_parts(model).items():
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--models", nargs="+", default=list(SPEED_MODELS), choices=list(SPEED_MODELS))


def main(args: argparse.Namespace) -> None:
    """Prints the parts table of every model of --models, one inference each after the warm-up."""
    from .tables import parts_table

    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models:
        model, inputs = build(name, args)
        with inference_mode(args.device, args.autocast):
            for _ in range(args.warmup):
                model(inputs)
            results[name] = {"parts": time_parts(model, lambda: model(inputs), args.device)}
        print(f"{name}: {dict(results[name]['parts'])}", flush=True)
    print(parts_table(results))
