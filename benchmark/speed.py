"""Side-by-side speed of the methods against Mask R-CNN R50-FPN, measured in one run.

Per model on the same inputs: parameters, FLOPs (fvcore's counter through detectron2.utils.analysis),
inference latency (warm-up, then median and p90), peak memory of one inference (growth of the peak RSS
on CPU, torch.cuda.max_memory_allocated on GPU), and training iteration time (forward + backward + SGD
step on a synthetic batch of 2 images); each also as a ratio to Mask R-CNN. A second table splits one
inference's time by part (backbone, proposal generator, RoI heads and their box, mask and semantic
heads). The latencies are taken in one subprocess where the models take turns, one inference each per
round, so that a shared machine slowing down or speeding up during the run moves every model alike and
not the ones measured last. Every model runs the other measurements in subprocesses of its own
(benchmark.worker) so that peaks do not mix: one the parts, FLOPs and training step, another the
memory (with glibc returning freed memory to the system at once, which slows allocation and so would
skew the times).

With --autocast, inference (latency, parts, memory) runs under torch.autocast in that dtype; the
training step stays in float32. With --channels-last every model is built with MODEL.CHANNELS_LAST
(weights and feature maps in NHWC memory format), for everything measured. With either, the latency
process also times each model in the default setting (float32, NCHW) in the same turns, and a table
gives the speed-up.

Writes a markdown table to --output: speed_<device>.md, with _<dtype> after --autocast and
_channels_last after --channels-last.

    python -m benchmark speed                           # CPU latency etc., all models
    python -m benchmark speed --device cuda --repeats 50
    python -m benchmark speed --autocast bfloat16       # inference in mixed precision
    python -m benchmark speed --channels-last           # NHWC weights and feature maps
"""
import argparse
import copy
import functools
import os
import statistics

import torch

from .flops import count_flops
from .models import SPEED_MODELS, add_model_options, build, infer, inference_mode, model_options_argv, setting, synthetic_batch
from .parts import time_parts
from .timing import PEAK_RSS_ENV, latency_stats, peak_memory_of, seconds_in_turns
from .worker import run_worker


def add_measurement_options(parser: argparse.ArgumentParser) -> None:
    """The options of the speed measurements, shared by the speed subcommand and the worker."""
    add_model_options(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-iters", type=int, default=2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_measurement_options(parser)
    parser.add_argument("--models", nargs="+", default=list(SPEED_MODELS), choices=list(SPEED_MODELS))
    parser.add_argument("--output", default="output/benchmark")


def measure_latencies(names, args) -> dict:
    """Runs in a subprocess: the inference latency of every model, the models taking turns; with
    --autocast or --channels-last every model takes a turn in the default setting too (float32,
    NCHW: a copy of the model), for the speed-up."""
    torch.set_num_threads(args.threads)
    runs = {}
    for name in names:
        model, inputs = build(name, args)
        runs[name] = functools.partial(infer, model, inputs, args.device, args.autocast)
        if setting(args):
            default = copy.deepcopy(model).to(memory_format=torch.contiguous_format) if args.channels_last else model
            runs[f"{name} (default)"] = functools.partial(infer, default, inputs, args.device, None)
    seconds = seconds_in_turns(runs, args.warmup, args.repeats, args.device)
    results = {name: latency_stats(seconds[name]) for name in names}
    if setting(args):
        for name in names:
            results[name]["latency_default_median"] = statistics.median(seconds[f"{name} (default)"])
    return results


def _warm_up(model, inputs, args) -> None:
    for _ in range(args.warmup):
        model(inputs)


def measure_memory(name, args) -> dict:
    """Runs in a subprocess started with PEAK_RSS_ENV: the peak memory of one inference."""
    torch.set_num_threads(args.threads)
    model, inputs = build(name, args)
    with inference_mode(args.device, args.autocast):
        _warm_up(model, inputs, args)
        return {"peak_memory": peak_memory_of(lambda: model(inputs), args.device)}


def train_step_seconds(model, size, args) -> float:
    """Median seconds of a training step (forward, backward, SGD step) on a synthetic batch."""
    from detectron2.utils.events import EventStorage

    model.train()
    batch = synthetic_batch(size, args.device, with_targets=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step():
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    with EventStorage():
        return statistics.median(seconds_in_turns({"train": train_step}, 1, args.train_iters, args.device)["train"])


def measure_model(name, args) -> dict:
    """Runs in a subprocess: every measurement of one model but its latency and memory."""
    torch.set_num_threads(args.threads)
    model, inputs = build(name, args)
    size = SPEED_MODELS[name][1]
    with inference_mode(args.device, args.autocast):
        _warm_up(model, inputs, args)
        result = {"params": sum(p.numel() for p in model.parameters()), "detections": len(model(inputs)[0]["instances"])}
        result["parts"] = time_parts(model, lambda: model(inputs), args.device)
        result.update(count_flops(model, inputs[0]["image"], size))
    result["train_iter"] = train_step_seconds(model, size, args)
    return result


def measure_in_subprocess(job: str, models, args, env=None) -> dict:
    """The result of benchmark.worker's `job` on `models` with the measurement options of `args`."""
    argv = [job, *models, *model_options_argv(args), f"--repeats={args.repeats}", f"--train-iters={args.train_iters}"]
    return run_worker(argv, env)


def output_name(args) -> str:
    return f"speed_{args.device}{'_' + args.autocast if args.autocast else ''}{'_channels_last' if args.channels_last else ''}.md"


def main(args: argparse.Namespace) -> None:
    from .tables import speed_table

    results = measure_in_subprocess("latency", args.models, args)
    for model in args.models:
        results[model].update(measure_in_subprocess("model", [model], args))
        # glibc tuned for measuring the peak (PEAK_RSS_ENV) makes every large allocation a system
        # call: only the memory is measured that way, in a process of its own
        results[model].update(measure_in_subprocess("memory", [model], args, dict(os.environ, **PEAK_RSS_ENV)))
        print(f"{model}: {results[model]}", flush=True)
    table = speed_table(results, args)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, output_name(args)), "w") as f:
        f.write(table + "\n")
    print(table)
