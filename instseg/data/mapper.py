"""Reading dataset images with errors that name the file, and the dataset mapper every method uses.

detectron2's ``read_image`` lets PIL errors through without the file name and saturates 16-bit images
to white when converting them to RGB; ``read_image`` here scales them to 8 bits instead.
"""
import copy

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps, UnidentifiedImageError

from ..detectron2_compat import transform_annotations

# PIL modes of 16-bit single-channel images (16-bit PNGs open as "I" or "I;16*")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def read_image(file_name: str, format: str = "BGR") -> np.ndarray:
    """An HWC uint8 image in `format` ("BGR", "RGB", "L", ...), EXIF orientation applied.

    Grayscale and RGBA images are converted; 16-bit images are scaled to 8 bits.
    Raises FileNotFoundError / ValueError naming the file when it is missing or cannot be decoded.
    """
    if not PathManager.exists(file_name):
        raise FileNotFoundError(f"image file {file_name!r} does not exist")
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now: a truncated file fails here, inside the try
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"cannot decode image {file_name!r} (corrupt, truncated or not an image): {e}") from e
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        scaled = np.asarray(image, dtype=np.float32) / 257.0  # 65535 -> 255
        image = Image.fromarray(np.clip(scaled.round(), 0, 255).astype(np.uint8), mode="L")
    return utils.convert_PIL_to_numpy(image, format)


def check_image_size(dataset_dict: dict, image: np.ndarray) -> None:
    """detectron2's size check, with a hint when the json holds the size before EXIF rotation."""
    height, width = image.shape[:2]
    expected = (dataset_dict.get("width", width), dataset_dict.get("height", height))
    if expected == (height, width) and expected != (width, height):
        raise ValueError(
            f"image {dataset_dict['file_name']!r} is {width}x{height} (after applying any EXIF "
            f"orientation), but its json entry says width={expected[0]}, height={expected[1]}, swapped: "
            f"the json must give the size of the upright image"
        )
    utils.check_image_size(dataset_dict, image)


class InstSegDatasetMapper(DatasetMapper):
    """detectron2's DatasetMapper for instance detection and segmentation (images and annotations;
    no semantic-segmentation files or precomputed proposals), reading images with ``read_image``."""

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        try:
            transforms = self.augmentations(aug_input)
        except ValueError as e:  # e.g. an image so elongated that resizing leaves 0 pixels on a side
            height, width = image.shape[:2]
            raise ValueError(
                f"cannot augment image {dataset_dict['file_name']!r} ({width}x{height}) with {self.augmentations}: {e}"
            ) from e
        image = aug_input.image
        # a copy where the CHW view is not contiguous or not writable (np.asarray of a PIL image;
        # a one-channel image's view is contiguous), which torch would warn about
        dataset_dict["image"] = torch.from_numpy(np.require(image.transpose(2, 0, 1), requirements=("C", "W")))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            transform_annotations(self, dataset_dict, transforms, image.shape[:2])
        return dataset_dict
