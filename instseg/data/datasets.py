"""User COCO datasets and the training set, with errors that say which file and what to change.

What detectron2 already handles is left to it: polygons of fewer than 3 points are dropped by
``load_coco_json`` (with a warning), boxes are clipped to the image and empty ones dropped by the mapper,
images without annotations are kept unless DATALOADER.FILTER_EMPTY_ANNOTATIONS (logged with a count).
"""
import os
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import load_coco_json


def _load_coco(json_file: str, image_root: str, name: str) -> List[dict]:
    try:
        return load_coco_json(json_file, image_root, name)
    except KeyError as e:  # e.g. a category_id missing from 'categories', or a missing field
        raise ValueError(f"dataset {name!r}, {json_file}: {e.args[0]}") from e


def register_coco_instances(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instance dataset (as detectron2's function of that name), checking
    that its files exist and naming the json file in load errors."""
    for path, what in ((json_file, "annotation json"), (image_root, "image folder")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"dataset {name!r}: {what} {path!r} does not exist")
    DatasetCatalog.register(name, lambda: _load_coco(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


def register_coco_datasets(specs) -> None:
    """Register (name, json_file, image_root) triples, e.g. from train_net.py --register-coco."""
    for name, json_file, image_root in specs:
        register_coco_instances(name, json_file, image_root)


def _describe(names: Sequence[str]) -> str:
    files = [MetadataCatalog.get(n).get("json_file", None) for n in names]
    return ", ".join(f"{n!r} ({f})" if f else repr(n) for n, f in zip(names, files))


def load_train_dicts(cfg) -> List[dict]:
    """The dataset dicts of cfg.DATASETS.TRAIN, as detectron2's train loader would load them.

    Raises ValueError when nothing is left to train on, or when masks are RLE but
    INPUT.MASK_FORMAT is "polygon".
    """
    names = list(cfg.DATASETS.TRAIN)
    filter_empty = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    try:
        dicts = get_detection_dataset_dicts(names, filter_empty=filter_empty)
    except AssertionError as e:  # detectron2 asserts that each dataset, and the result, is non-empty
        hint = " (DATALOADER.FILTER_EMPTY_ANNOTATIONS is True: images without annotations were removed)"
        raise ValueError(
            f"no images to train on in DATASETS.TRAIN = {_describe(names)}: {e}{hint if filter_empty else ''}"
        ) from e
    if cfg.INPUT.MASK_FORMAT == "polygon":
        for record in dicts:
            for annotation in record.get("annotations", []):
                if isinstance(annotation.get("segmentation"), dict):
                    raise ValueError(
                        f"{_describe(names)}: image {record['file_name']!r} has an RLE mask, which "
                        f"INPUT.MASK_FORMAT 'polygon' cannot hold; set INPUT.MASK_FORMAT bitmask"
                    )
    return dicts
