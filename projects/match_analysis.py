"""Where a model's mask AP goes, instance by instance: every ground-truth instance of a COCO-format
dataset is matched to the detection of its image with the highest box IoU (any class; matched when
the IoU is >= 0.5), and each run's matches are summed up as

- matched: the share of ground-truth instances with a match (class-agnostic recall at IoU 0.5);
- class right: the share whose best-scored detection among those with box IoU >= 0.5 has its class;
- corner error: the mean |predicted - true| box coordinate of the matches, in pixels, on small instances;
- mask IoU of the matches, by box IoU range and by COCO size (small < 32^2 <= medium < 96^2 px area).

Mask IoU within one box IoU range compares mask branches at equally good boxes, which mask AP
cannot: a mask pasted into a box cannot be better than its box allows.

    python projects/match_analysis.py --dataset shapes_test output/benchmark/accuracy/*/

reads each run's detectron2 results, `<run>/<dataset>/inference/<dataset>/coco_instances_results.json`
(written by `python -m benchmark accuracy`) or `<run>/inference/<dataset>/...` (by training).
"""
import argparse
import collections
import json
import os

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

BOX_IOU_EDGES = (0.5, 0.7, 0.85, 1.0)  # the box IoU ranges [0.5, 0.7), [0.7, 0.85), [0.85, 1]
SMALL_AREA, LARGE_AREA = 32**2, 96**2  # COCO's size ranges


def _size(area: float) -> str:
    return "small" if area < SMALL_AREA else "medium" if area < LARGE_AREA else "large"


def _xyxy(box):
    x, y, w, h = box
    return np.array([x, y, x + w, y + h])


def match_instances(gt: COCO, results: list) -> list:
    """One dict per non-crowd ground-truth instance: its size, and for a matched instance the box IoU,
    mask IoU and mean absolute corner error of its match and whether the class is right."""
    by_image = collections.defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    matches = []
    for ann in gt.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        match = {"size": _size(ann["area"]), "matched": False}
        matches.append(match)
        dets = by_image[ann["image_id"]]
        if not dets:
            continue
        box_ious = mask_util.iou([d["bbox"] for d in dets], [ann["bbox"]], [0])[:, 0]
        best = int(np.argmax(box_ious))
        if box_ious[best] < 0.5:
            continue
        overlapping = [d for d, iou in zip(dets, box_ious) if iou >= 0.5]
        top_scored = max(overlapping, key=lambda d: d["score"])
        match.update(
            matched=True,
            box_iou=float(box_ious[best]),
            mask_iou=float(mask_util.iou([dets[best]["segmentation"]], [gt.annToRLE(ann)], [0])[0, 0]),
            corner_error=float(np.abs(_xyxy(dets[best]["bbox"]) - _xyxy(ann["bbox"])).mean()),
            class_right=top_scored["category_id"] == ann["category_id"],
        )
    return matches


def summarize(matches: list) -> dict:
    """The shares and means of the module docstring (None where no instance falls in a group)."""

    def mean(values):
        return float(np.mean(values)) if values else None

    hits = [m for m in matches if m["matched"]]
    summary = {
        "instances": len(matches),
        "matched": len(hits) / len(matches),
        "class right": mean([m["class_right"] for m in hits]),
        "corner error small (px)": mean([m["corner_error"] for m in hits if m["size"] == "small"]),
    }
    inner_edges = BOX_IOU_EDGES[1:-1]
    for i, (lo, hi) in enumerate(zip(BOX_IOU_EDGES[:-1], BOX_IOU_EDGES[1:])):
        in_range = [m["mask_iou"] for m in hits if np.searchsorted(inner_edges, m["box_iou"], side="right") == i]
        summary[f"matches at box IoU {lo}-{hi}"] = len(in_range)
        summary[f"mask IoU at box IoU {lo}-{hi}"] = mean(in_range)
    for size in ("small", "medium", "large"):
        summary[f"mask IoU {size}"] = mean([m["mask_iou"] for m in hits if m["size"] == size])
    return summary


def results_file(run: str, dataset: str) -> str:
    from benchmark.accuracy import final_evaluation_dir
    from instseg.engine import evaluation_dir

    # output folders of `python -m benchmark accuracy`'s evaluation of the final model, and of training
    for output_dir in (final_evaluation_dir(run, dataset), run):
        path = os.path.join(evaluation_dir(output_dir, dataset), "coco_instances_results.json")
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no coco_instances_results.json for dataset {dataset!r} in run {run!r}: evaluate it first")


def format_table(summaries: dict) -> str:
    columns = list(next(iter(summaries.values())))

    def cell(value):
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {run} | " + " | ".join(cell(s[c]) for c in columns) + " |" for run, s in summaries.items()]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="shapes_test", help="a registered COCO-format dataset")
    parser.add_argument("runs", nargs="+", help="output folders of runs evaluated on --dataset")
    args = parser.parse_args()

    from detectron2.data import DatasetCatalog, MetadataCatalog

    import instseg.data  # noqa: F401  registers the embedded dataset

    DatasetCatalog.get(args.dataset)  # generates the embedded data where missing
    gt = COCO(MetadataCatalog.get(args.dataset).json_file)
    summaries = {}
    for run in args.runs:
        with open(results_file(run, args.dataset)) as f:
            summaries[os.path.basename(os.path.normpath(run))] = summarize(match_instances(gt, json.load(f)))
    print(format_table(summaries))


if __name__ == "__main__":
    main()
