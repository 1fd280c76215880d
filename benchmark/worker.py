"""The measuring subprocesses of the speed and blender subcommands, one job each, so that one job's
peak memory or allocator setting does not reach another's:

    python -m benchmark.worker latency MODEL... [options]   # the models' latencies, taking turns
    python -m benchmark.worker model MODEL [options]        # params, detections, parts, FLOPs, train step
    python -m benchmark.worker memory MODEL [options]       # peak memory of one inference
    python -m benchmark.worker blender-memory VARIANT [options]

Each prints its result as JSON on its last line. Internal: the user's CLI is `python -m benchmark`."""
import argparse
import json
import os
import subprocess
import sys


def run_worker(argv: list, env=None):
    """Runs `python -m benchmark.worker ARGV` in a fresh process and returns its JSON result."""
    cmd = [sys.executable, "-m", "benchmark.worker", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ if env is None else env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    from . import blender, speed
    from .models import SPEED_MODELS

    parser = argparse.ArgumentParser(prog="python -m benchmark.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs = parser.add_subparsers(dest="job", required=True)
    latency = jobs.add_parser("latency")
    latency.add_argument("models", nargs="+", choices=list(SPEED_MODELS))
    speed.add_measurement_options(latency)
    latency.set_defaults(run=lambda args: speed.measure_latencies(args.models, args))
    for job, measure in (("model", speed.measure_model), ("memory", speed.measure_memory)):
        sub = jobs.add_parser(job)
        sub.add_argument("model", choices=list(SPEED_MODELS))
        speed.add_measurement_options(sub)
        sub.set_defaults(run=lambda args, measure=measure: measure(args.model, args))
    memory = jobs.add_parser("blender-memory")
    memory.add_argument("variant", choices=sorted(blender.VARIANTS))
    blender.add_arguments(memory)
    memory.set_defaults(run=lambda args: blender.peak_memory_bytes(args.variant, args))
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    print(json.dumps(args.run(args)))


if __name__ == "__main__":
    main()
