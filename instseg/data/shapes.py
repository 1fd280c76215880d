"""The embedded dataset: deterministic synthetic scenes of shapes in COCO instance format.

Each image holds a few shapes of three classes -- ellipses (smooth curved boundaries), triangles and
rectangles (sharp corners) -- at random sizes from small to large, rotations and colours, drawn in
order over a textured background, so later shapes occlude earlier ones. Every annotation is the
*visible* part of its shape, stored as compressed RLE (so configs use INPUT.MASK_FORMAT "bitmask").
Colours are random per shape, so the class can only be told from the outline.

Generation takes seconds and is cached: ``generate_shapes(root)`` writes nothing when ``root`` already
holds a dataset of the same version.
"""
import json
import os
from typing import Dict, List

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

CLASSES = ["ellipse", "triangle", "rectangle"]
# split -> (number of images, seed offset). "val" is small so that training evaluates in seconds;
# "test" is for comparisons that must not drown in the noise of 50 images (python -m benchmark accuracy).
SPLITS = {"train": (400, 0), "val": (50, 1_000_000), "test": (500, 2_000_000)}
IMAGE_SIZE = 256
VERSION = "shapes-v3"  # bump when the generator's output changes


def _shape_polygon(rng: np.random.RandomState, category: str, cx: float, cy: float, size: float):
    """Vertices (x, y) of one shape of diameter about `size` centred at (cx, cy)."""
    angle = rng.uniform(0, 2 * np.pi)
    if category == "ellipse":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        ratio = rng.uniform(0.6, 1.0)
        pts = np.stack([np.cos(t) * size / 2, np.sin(t) * size / 2 * ratio], axis=1)
    elif category == "triangle":
        t = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * size / 2
    else:  # rectangle
        w, h = size / 2, size / 2 * rng.uniform(0.5, 1.0)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / np.sqrt(2) * 1.3
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return [tuple(p) for p in pts @ rot.T + np.array([cx, cy])]


def _background(rng: np.random.RandomState) -> np.ndarray:
    """A smooth colour gradient with noise: (H, W, 3) uint8."""
    ramp = np.linspace(0, 1, IMAGE_SIZE)
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    direction = rng.uniform(0, 1)
    t = direction * ramp[None, :] + (1 - direction) * ramp[:, None]
    img = c0 + (c1 - c0) * t[..., None] + rng.normal(0, 8, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def render_scene(seed: int):
    """One scene. Returns the (H, W, 3) uint8 RGB image and a list of (category index, visible mask)."""
    rng = np.random.RandomState(seed)
    image = Image.fromarray(_background(rng))
    draw = ImageDraw.Draw(image)
    shapes = []
    for _ in range(rng.randint(2, 7)):
        category = rng.randint(len(CLASSES))
        size = rng.choice([rng.uniform(14, 32), rng.uniform(32, 120)])  # small and large objects
        cx, cy = rng.uniform(size / 3, IMAGE_SIZE - size / 3, 2)
        polygon = _shape_polygon(rng, CLASSES[category], cx, cy, size)
        color = tuple(int(c) for c in rng.randint(0, 256, 3))
        draw.polygon(polygon, fill=color)
        mask_img = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask_img).polygon(polygon, fill=1)
        shapes.append((category, np.array(mask_img, dtype=bool)))
    # a shape is hidden where any later shape covers it
    visible = []
    covered = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for category, mask in reversed(shapes):
        vis = mask & ~covered
        covered |= mask
        if vis.sum() >= max(30, 0.6 * mask.sum()):  # drop shapes too hidden to recognise
            visible.append((category, vis))
    return np.array(image), visible[::-1]


def _annotation(mask: np.ndarray, category: int, image_id: int, ann_id: int) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category + 1,
        "segmentation": rle,
        "area": float(mask_util.area(rle)),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "iscrowd": 0,
    }


def _write_split(root: str, split: str, num_images: int, seed_offset: int) -> None:
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images: List[Dict] = []
    annotations: List[Dict] = []
    for index in range(num_images):
        image, shapes = render_scene(seed_offset + index)
        file_name = f"{index:05d}.png"
        Image.fromarray(image).save(os.path.join(image_dir, file_name))
        images.append({"id": index + 1, "file_name": file_name, "height": IMAGE_SIZE, "width": IMAGE_SIZE})
        for category, mask in shapes:
            annotations.append(_annotation(mask, category, index + 1, len(annotations) + 1))
    coco = {
        "info": {"description": f"instseg synthetic shapes ({VERSION})"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
    }
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(json_path(root, split), "w") as f:
        json.dump(coco, f)


def json_path(root: str, split: str) -> str:
    return os.path.join(root, "annotations", f"instances_{split}.json")


def generate_shapes(root: str) -> None:
    """Write the splits under `root`, unless a dataset of this VERSION is there."""
    stamp = os.path.join(root, "VERSION")
    if os.path.exists(stamp) and open(stamp).read().strip() == VERSION:
        return
    for split, (num_images, seed_offset) in SPLITS.items():
        _write_split(root, split, num_images, seed_offset)
    with open(stamp, "w") as f:  # written last: an interrupted generation is redone
        f.write(VERSION + "\n")
