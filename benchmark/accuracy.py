"""Accuracy of the methods on the embedded data: trains every *_shapes config with its (equal)
schedule through projects/train_net.py and collects mask, Boundary and box AP and the trained model's
inference time per image (detectron2's evaluator measures it).

The AP that training reports is on the 50 validation images, too few to tell apart models about 1 AP
apart; the final models are also evaluated on the 500 images of the test split, the numbers the table
leads with and the plot shows (the seed still moves a run by up to about 2 AP there). --models
retrains only some of them (after a change to one method, say); the others' rows are read from their
runs in --output.

Writes accuracy.md and accuracy.png (the speed-vs-accuracy plot) to --output.

    python -m benchmark accuracy                        # trains the *_shapes configs (long)
    python -m benchmark accuracy --models "BlendMask R18"
    python -m benchmark accuracy --models               # no training: re-read, evaluate new models
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

from .models import ACCURACY_MODELS

# the split of the table's low-noise numbers (evaluated once per trained model; sizes in SPLITS)
TEST_SPLIT = "shapes_test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="*", default=list(ACCURACY_MODELS), choices=list(ACCURACY_MODELS),
        help="the models to (re)train; the others are read from their runs in --output "
        "(given with no names: none is retrained)",
    )
    parser.add_argument("--output", default="output/benchmark")


def last_metrics(output_dir: str) -> dict:
    """The last value of every segm/, bbox/ and boundary/ metric in a run's metrics.json."""
    metrics = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            # metrics.json writes NaN (no ground truth of a size) as null
            metrics.update({
                k: float("nan") if v is None else v for k, v in row.items() if k.startswith(("segm/", "bbox/", "boundary/"))
            })
    return metrics


def inference_seconds_per_image(output_dir: str) -> float:
    """detectron2's evaluator logs the model's pure compute time per image (batch size 1)."""
    with open(os.path.join(output_dir, "log.txt")) as f:
        times = re.findall(r"Total inference pure compute time: .*?\(([0-9.]+) s / iter per device", f.read())
    return float(times[-1])


def log_minutes(output_dir: str) -> float:
    """Minutes from the first to the last line of a run's log.txt (training + evaluation)."""
    with open(os.path.join(output_dir, "log.txt")) as f:
        stamps = re.findall(r"^\[(\d\d/\d\d \d\d:\d\d:\d\d)\]", f.read(), flags=re.M)
    first, last = (time.strptime(s, "%m/%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return (time.mktime(last) - time.mktime(first)) / 60


def final_evaluation_dir(out: str, dataset: str) -> str:
    """The OUTPUT_DIR of evaluate_final_model's evaluation of the run in `out` on `dataset`."""
    return os.path.join(out, dataset)


def evaluate_final_model(out: str, dataset: str = TEST_SPLIT) -> dict:
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


def run_accuracy(models, output: str) -> dict:
    """Train and evaluate the *_shapes configs named by `models`, one after the other, each with its
    own schedule (all equal: 400 iterations of 4 images). The other models' rows come from their
    finished runs in `output`; a model with none is left out (and said so)."""
    rows = {}
    for name, config in ACCURACY_MODELS.items():
        out = os.path.join(output, "accuracy", os.path.splitext(os.path.basename(config))[0])
        if name in models:
            shutil.rmtree(out, ignore_errors=True)  # a fresh run: detectron2 appends to log.txt and metrics.json
            subprocess.run([sys.executable, "projects/train_net.py", "--config-file", config, "OUTPUT_DIR", out], check=True)
        elif not os.path.exists(os.path.join(out, "metrics.json")):
            print(f"{name}: left out of the table, no finished run in {out} (add it to --models)", flush=True)
            continue
        rows[name] = dict(
            last_metrics(out),
            test=evaluate_final_model(out),
            train_minutes=log_minutes(out),
            inference_ms=inference_seconds_per_image(out) * 1e3,
        )
    return rows


def main(args: argparse.Namespace) -> None:
    from .tables import accuracy_table, plot

    os.makedirs(args.output, exist_ok=True)
    rows = run_accuracy(args.models, args.output)
    table = accuracy_table(rows)
    plot(rows, os.path.join(args.output, "accuracy.png"))
    with open(os.path.join(args.output, "accuracy.md"), "w") as f:
        f.write(table + "\n")
    print(table)
