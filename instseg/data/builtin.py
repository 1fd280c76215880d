"""Registers the embedded shapes dataset as "shapes_train", "shapes_val" and "shapes_test".

Like detectron2's builtin datasets it lives under $DETECTRON2_DATASETS (default ./datasets), in
shapes/; it is generated the first time a split is loaded.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .shapes import CLASSES, SPLITS, generate_shapes, json_path


def _load_split(root: str, split: str):
    generate_shapes(root)
    return load_coco_json(json_path(root, split), os.path.join(root, split), f"shapes_{split}")


def register_shapes(root: str) -> None:
    for split in SPLITS:
        name = f"shapes_{split}"
        DatasetCatalog.register(name, lambda split=split: _load_split(root, split))
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASSES),
            json_file=json_path(root, split),
            image_root=os.path.join(root, split),
            evaluator_type="coco",
        )


register_shapes(os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "shapes"))
