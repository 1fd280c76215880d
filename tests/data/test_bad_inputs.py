"""Bad input gives a clear error naming the file / field / key and what was expected, or is handled.

Each test writes a small COCO dataset of its own (64 x 64 images, the 3 classes of the shapes
configs) and goes through what train_net.py uses: Trainer.build_train_loader's dataset loading and
InstSegDatasetMapper.
"""
import itertools
import json
import logging

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import CONFIGS, RANDOM_WEIGHTS, TINY
from PIL import Image

from instseg.checkpoint import Checkpointer
from instseg.data.datasets import load_train_dicts, register_coco_instances
from instseg.data.mapper import InstSegDatasetMapper, read_image
from instseg.engine import Predictor, build_config

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
_names = (f"bad_input_{i}" for i in itertools.count())


def square(x, y, size, category_id=1, **extra):
    """A square annotation with its polygon."""
    polygon = [x, y, x + size, y, x + size, y + size, x, y + size]
    return {"bbox": [x, y, size, size], "category_id": category_id, "segmentation": [polygon],
            "area": size * size, "iscrowd": 0, **extra}


def write_dataset(tmp_path, images, annotations_per_image, categories=CATEGORIES):
    """images: [(file name, PIL image or None (not written), json width, json height)].
    Registers the dataset under a fresh name and returns it."""
    coco = {"images": [], "annotations": [], "categories": categories}
    for image_id, ((file_name, image, width, height), annotations) in enumerate(
        zip(images, annotations_per_image), start=1
    ):
        if image is not None:
            image.save(tmp_path / file_name)
        coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for annotation in annotations:
            coco["annotations"].append({**annotation, "id": len(coco["annotations"]) + 1, "image_id": image_id})
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(coco))
    name = next(_names)
    register_coco_instances(name, str(json_file), str(tmp_path))
    return name


def rgb(width=64, height=64, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def config_for(name, *opts):
    """Training on dataset `name` at the images' own size (64), without random flips."""
    size = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.RANDOM_FLIP", "none"]
    return build_config(CONFIGS[0], TINY + size + ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", *opts])


def mapped(name, *opts):
    """Every image of the dataset through the training mapper."""
    cfg = config_for(name, *opts)
    mapper = InstSegDatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in load_train_dicts(cfg)]


def test_missing_image_file_is_named(tmp_path):
    # registration checks every image (tests/data/test_datasets.py); one removed later is named by the mapper
    rgb().save(tmp_path / "gone.png")
    name = write_dataset(tmp_path, [("gone.png", None, 64, 64)], [[square(5, 5, 20)]])
    (tmp_path / "gone.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"gone\.png.*does not exist"):
        mapped(name)


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_corrupt_image_is_named(tmp_path, damage):
    rgb().save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(data[: len(data) // 2] if damage == "truncated" else b"hello")
    name = write_dataset(tmp_path, [("bad.png", None, 64, 64)], [[square(5, 5, 20)]])
    with pytest.raises(ValueError, match=r"cannot decode image .*bad\.png"):
        mapped(name)


def test_image_too_elongated_to_resize_is_named(tmp_path):
    # resized to at most 64 px on its long side, a 2000 x 3 image would be 0 pixels wide
    name = write_dataset(tmp_path, [("needle.png", rgb(3, 2000), 3, 2000)], [[square(0, 5, 2)]])
    with pytest.raises(ValueError, match=r"cannot augment image .*needle\.png' \(3x2000\) with .*ResizeShortestEdge"):
        mapped(name)


def test_grayscale_rgba_and_16_bit_images_become_8_bit_bgr(tmp_path):
    gray = np.full((64, 64), 77, np.uint8)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10  # red, nearly transparent
    sixteen = np.full((64, 64), 65535, np.uint16)
    sixteen[:, 32:] = 32896  # 128 * 257
    images = [
        ("gray.png", Image.fromarray(gray), 64, 64),
        ("rgba.png", Image.fromarray(rgba, "RGBA"), 64, 64),
        ("sixteen.png", Image.fromarray(sixteen), 64, 64),
    ]
    name = write_dataset(tmp_path, images, [[square(5, 5, 20)]] * 3)
    by_file = {d["file_name"].split("/")[-1]: d["image"] for d in mapped(name)}
    for image in by_file.values():
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert (by_file["gray.png"] == 77).all()
    assert by_file["rgba.png"][2].eq(200).all() and by_file["rgba.png"][:2].eq(0).all()  # BGR: red last
    assert (by_file["sixteen.png"][:, :, :32] == 255).all() and (by_file["sixteen.png"][:, :, 32:] == 128).all()


def exif_rotated_jpeg(path):
    """A 40 (wide) x 20 (high) JPEG whose EXIF orientation 6 says: display rotated 90 degrees
    clockwise, i.e. upright it is 20 wide and 40 high; its top-left stored pixel is white."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:5, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif, quality=100)


def test_exif_rotated_image_is_read_upright(tmp_path):
    exif_rotated_jpeg(tmp_path / "rotated.jpg")
    image = read_image(str(tmp_path / "rotated.jpg"), format="RGB")
    assert image.shape == (40, 20, 3)
    assert image[:5, -5:].mean() > 200 and image[-5:, :5].mean() < 50  # top-left went to top-right
    name = write_dataset(tmp_path, [("rotated.jpg", None, 20, 40)], [[square(2, 2, 10)]])
    _, height, width = mapped(name)[0]["image"].shape
    assert height == 2 * width


def test_json_size_of_the_stored_exif_image_gets_a_hint(tmp_path):
    exif_rotated_jpeg(tmp_path / "rotated.jpg")
    name = write_dataset(tmp_path, [("rotated.jpg", None, 40, 20)], [[square(2, 2, 10)]])
    with pytest.raises(ValueError, match=r"rotated\.jpg.*upright"):
        mapped(name)


def test_image_size_disagreeing_with_json_is_named(tmp_path):
    name = write_dataset(tmp_path, [("img.png", rgb(64, 64), 80, 64)], [[square(5, 5, 20)]])
    with pytest.raises(ValueError, match=r"img\.png.*\(64, 64\), expect \(80, 64\)"):
        mapped(name)


def test_image_without_annotations_is_kept_unless_configured(tmp_path):
    images = [("a.png", rgb(seed=1), 64, 64), ("empty.png", rgb(seed=2), 64, 64)]
    name = write_dataset(tmp_path, images, [[square(5, 5, 20)], []])
    kept = mapped(name, "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False")
    assert [len(d["instances"]) for d in kept] == [1, 0]
    assert len(load_train_dicts(config_for(name, "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True"))) == 1


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.split("/")[1])
def test_every_method_trains_on_an_image_without_annotations(config, two_box_batch):
    cfg = build_config(config, TINY + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    model.train()
    empty = dict(two_box_batch[0], instances=two_box_batch[0]["instances"][[]])
    with EventStorage(0):
        losses = model(two_box_batch + [empty])
        total = sum(losses.values())
        total.backward()
    assert torch.isfinite(total)


def test_zero_area_and_out_of_image_boxes(tmp_path):
    annotations = [
        square(5, 5, 20),
        {**square(30, 30, 0), "area": 0},  # zero area: dropped
        square(50, 40, 40),  # reaches past the 64 x 64 image: clipped
    ]
    name = write_dataset(tmp_path, [("img.png", rgb(), 64, 64)], [annotations])
    instances = mapped(name)[0]["instances"]
    assert len(instances) == 2
    boxes = instances.gt_boxes.tensor
    assert boxes.min() >= 0 and boxes.max() <= 64
    assert torch.allclose(boxes[1], torch.tensor([50.0, 40.0, 64.0, 64.0]))


def test_polygons_with_fewer_than_3_points_are_dropped(tmp_path):
    two_points = {**square(30, 30, 10), "segmentation": [[30, 30, 40, 40]]}
    name = write_dataset(tmp_path, [("img.png", rgb(), 64, 64)], [[square(5, 5, 20), two_points]])
    records = load_train_dicts(config_for(name))
    assert len(records[0]["annotations"]) == 1
    assert len(mapped(name)[0]["instances"]) == 1


def test_rle_masks_compressed_and_uncompressed(tmp_path):
    mask = np.zeros((64, 64), np.uint8, order="F")
    mask[10:30, 5:25] = 1
    compressed = mask_util.encode(mask)
    compressed["counts"] = compressed["counts"].decode()
    pixels = mask.flatten(order="F")  # COCO's uncompressed RLE: run lengths, column-major, from 0s
    runs = [len(list(group)) for _, group in itertools.groupby(pixels)]
    uncompressed = {"size": [64, 64], "counts": ([0] if pixels[0] else []) + runs}
    annotations = [{**square(5, 10, 20), "segmentation": rle} for rle in (compressed, uncompressed)]
    name = write_dataset(tmp_path, [("img.png", rgb(), 64, 64)], [annotations])
    masks = mapped(name, "INPUT.MASK_FORMAT", "bitmask")[0]["instances"].gt_masks.tensor
    assert masks.shape == (2, 64, 64)
    assert torch.equal(masks[0], torch.from_numpy(mask.astype(bool))) and torch.equal(masks[0], masks[1])
    with pytest.raises(ValueError, match=r"RLE mask.*INPUT\.MASK_FORMAT bitmask"):
        mapped(name, "INPUT.MASK_FORMAT", "polygon")


def test_category_id_missing_from_categories_names_the_json(tmp_path):
    name = write_dataset(tmp_path, [("img.png", rgb(), 64, 64)], [[square(5, 5, 20, category_id=7)]])
    with pytest.raises(ValueError, match=r"instances\.json.*category_id=7"):
        load_train_dicts(config_for(name))


def test_empty_dataset_is_named(tmp_path):
    name = write_dataset(tmp_path, [], [])
    with pytest.raises(ValueError, match=rf"no images to train on.*{name}.*instances\.json"):
        load_train_dicts(config_for(name))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.split("/")[1])
def test_checkpoint_with_other_number_of_classes_loads_the_rest(config, tmp_path, caplog):
    no_data = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
    source = build_model(build_config(config, no_data + ["MODEL.ROI_HEADS.NUM_CLASSES", "5"]))
    Checkpointer(source, str(tmp_path)).save("five_classes")
    target = build_model(build_config(config, ["MODEL.DEVICE", "cpu"]))
    fvcore_logger = logging.getLogger("fvcore.common.checkpoint")
    fvcore_logger.addHandler(caplog.handler)  # detectron2's setup_logger may stop propagation
    try:
        Checkpointer(target).load(str(tmp_path / "five_classes.pth"))
    finally:
        fvcore_logger.removeHandler(caplog.handler)
    source_state, target_state = source.state_dict(), target.state_dict()
    mismatched = [k for k in target_state if source_state[k].shape != target_state[k].shape]
    assert mismatched  # the class-dependent layers
    for key in mismatched:
        assert f"Skip loading parameter '{key}'" in caplog.text
    assert all(torch.equal(source_state[k], target_state[k]) for k in target_state if k not in mismatched)


def test_predictor_names_what_it_expects():
    predictor = Predictor(build_config(CONFIGS[0], ["MODEL.DEVICE", "cpu", *RANDOM_WEIGHTS]))  # test size 256
    with pytest.raises(ValueError, match=r"H x W x 3 numpy array in BGR order, got ndarray of shape \(3, 64, 64\)"):
        predictor(np.zeros((3, 64, 64), np.uint8))  # channels first
    with pytest.raises(ValueError, match=r"got Tensor of shape \(64, 64, 3\)"):
        predictor(torch.zeros(64, 64, 3))
    with pytest.raises(ValueError, match=r"cannot resize a 3x2000 image with .*ResizeShortestEdge.*0 pixels"):
        predictor(np.zeros((2000, 3, 3), np.uint8))


def test_huge_image_is_resized_before_the_model(monkeypatch):
    cfg = build_config(CONFIGS[0], ["MODEL.DEVICE", "cpu", *RANDOM_WEIGHTS])  # test size 256
    predictor = Predictor(cfg)
    seen = []
    forward = predictor.model.forward
    monkeypatch.setattr(predictor.model, "forward", lambda inputs: seen.append(inputs[0]["image"].shape) or forward(inputs))
    image = np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
    instances = predictor(image)["instances"]
    assert max(seen[0][1:]) <= cfg.INPUT.MAX_SIZE_TEST
    assert instances.image_size == (3000, 4000)  # results are mapped back to the input size
