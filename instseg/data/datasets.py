"""User COCO datasets and the training set, with errors that say which file and what to change.

What detectron2 already handles is left to it: polygons of fewer than 3 points are dropped by
``load_coco_json`` (with a warning), boxes are clipped to the image and empty ones dropped by the mapper,
images without annotations are kept unless DATALOADER.FILTER_EMPTY_ANNOTATIONS (logged with a count).
"""
import json
import os
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import load_coco_json


def _load_coco(json_file: str, image_root: str, name: str) -> List[dict]:
    try:
        return load_coco_json(json_file, image_root, name)
    except KeyError as e:  # e.g. a category_id missing from 'categories', or a missing field
        raise ValueError(f"dataset {name!r}, {json_file}: {e.args[0]}") from e


# how many missing image files an error lists
MISSING_SHOWN = 5


def _read_images_and_categories(name: str, json_file: str):
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"dataset {name!r}: {json_file} is not a JSON file: {e}") from e
    missing = [key for key in ("images", "categories") if not isinstance(coco, dict) or key not in coco]
    if missing:
        raise ValueError(f"dataset {name!r}: {json_file} has no {' or '.join(repr(k) for k in missing)}: not a COCO instance json")
    return coco["images"], coco["categories"]


def check_image_files(name: str, json_file: str, image_root: str, images: Sequence[dict]) -> None:
    """Raise FileNotFoundError when an image of the json's 'images' is not at image_root/file_name,
    naming the first few, the root and, when the files are elsewhere, the root that finds them."""
    missing = [i["file_name"] for i in images if not os.path.isfile(os.path.join(image_root, i["file_name"]))]
    if not missing:
        return
    shown = ", ".join(repr(os.path.join(image_root, f)) for f in missing[:MISSING_SHOWN])
    more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
    message = (
        f"dataset {name!r}: {len(missing)} of the {len(images)} images of {json_file} are not under "
        f"IMAGE_ROOT {image_root!r}, the folder that their file_name is relative to: {shown}{more}"
    )
    candidates = [os.path.dirname(os.path.normpath(image_root)), os.path.dirname(json_file), "."]
    found = next((c for c in candidates if os.path.isfile(os.path.join(c, missing[0]))), None)
    if found is not None:
        message += f"; {missing[0]!r} is under {found or '.'!r}: use that folder as IMAGE_ROOT"
    raise FileNotFoundError(message)


def register_coco_instances(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instance dataset (as detectron2's function of that name).

    `image_root` (IMAGE_ROOT) is the folder that the json's file_name entries are relative to: for
    file_name "JPEGImages/a.jpg" it is the folder that holds JPEGImages/. Registration reads the
    json once and checks that it and every image file exist (a stat per image), so that a wrong
    path is an error before any model is built; it sets the class names (in the order of the
    category ids, as load_coco_json does) for the MODEL.ROI_HEADS.NUM_CLASSES check. The
    annotations are loaded when the dataset is used, with load errors naming the json file."""
    for path, what in ((json_file, "annotation json"), (image_root, "image folder")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"dataset {name!r}: {what} {path!r} does not exist")
    images, categories = _read_images_and_categories(name, json_file)
    check_image_files(name, json_file, image_root, images)
    names_by_id = {c["id"]: c["name"] for c in categories}
    category_ids = sorted(names_by_id)
    DatasetCatalog.register(name, lambda: _load_coco(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=[names_by_id[i] for i in category_ids],
        thing_dataset_id_to_contiguous_id={dataset_id: i for i, dataset_id in enumerate(category_ids)},
    )


def register_coco_datasets(specs) -> None:
    """Register (name, json_file, image_root) triples, e.g. from train_net.py --register-coco."""
    for name, json_file, image_root in specs:
        register_coco_instances(name, json_file, image_root)


def check_registered(cfg, keys: Sequence[str] = ("TRAIN", "TEST")) -> None:
    """Raise a KeyError when DATASETS.<key> names a dataset that is not registered, saying how to
    register it (instead of detectron2's list of every builtin dataset)."""
    for key in keys:
        for name in cfg.DATASETS[key]:
            if name not in DatasetCatalog:
                raise KeyError(
                    f"DATASETS.{key} names dataset {name!r}, which is not registered: register its COCO "
                    f"json with --register-coco {name} JSON IMAGE_ROOT (projects/train_net.py, "
                    f"projects/demo.py; IMAGE_ROOT is the folder the json's file_name entries are "
                    f"relative to), or instseg.data.datasets.register_coco_instances in a script"
                )


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
