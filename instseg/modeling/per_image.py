"""Per-RoI results of a batch handed back to each image's Instances."""
from typing import List

from detectron2.structures import Instances
from torch import Tensor


def set_per_image(instances: List[Instances], field: str, values: Tensor) -> None:
    """Split `values` (M, ...), one row per instance of all images in order, by image and set them
    as `field` of each image's Instances (an image without instances gets an empty (0, ...) slice)."""
    for inst, per_image in zip(instances, values.split([len(x) for x in instances])):
        inst.set(field, per_image)
