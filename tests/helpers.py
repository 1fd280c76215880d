"""What several test files share: the method configs, a few-iteration 128 px schedule, a user's
COCO dataset as labelme exports it."""
import json
import os
import subprocess
import sys

import numpy as np
import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from PIL import Image

from instseg.config import get_project_cfg
from instseg.modeling.fcos import FCOS

TESTS = os.path.dirname(os.path.abspath(__file__))

CONFIGS = [
    "configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml",
    "configs/CenterMask/centermask_lite_V_19_eSE_shapes.yaml",
    "configs/BlendMask/R_18_shapes.yaml",
    "configs/RefineMask/refinemask_R_18_FPN_shapes.yaml",
]
TINY = [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "2",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
    # after 4 clipped steps FCOS's scores are still near their prior (0.01): keep every detection so
    # that evaluation and the pictures have something to show
    "MODEL.FCOS.INFERENCE_TH_TEST", "0.0",
]
# every detection kept, so that the mask branches of a randomly initialised model run
ZERO_THRESHOLDS = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.FCOS.INFERENCE_TH_TEST", "0.0"]
# Predictor and evaluation refuse a randomly initialised model unless told so
RANDOM_WEIGHTS = ["TEST.ALLOW_RANDOM_WEIGHTS", "True"]


def run(*command, timeout=600):
    """Run a python script (or `-m module`) of this repo; returns its output, asserting success."""
    # the scripts of tests/ import this module: they find it as pytest does
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def fcos_boxes_across_borders(fcos) -> None:
    """Make a randomly initialised FCOS detect large boxes everywhere: every location's class scores
    near 1 and its box 6 strides to each side, so the detections near the image border cross it."""
    with torch.no_grad():
        fcos.fcos_head.cls_logits.bias.fill_(8.0)
        fcos.fcos_head.bbox_pred.weight.zero_()
        fcos.fcos_head.bbox_pred.bias.fill_(6.0)


# labelme's export: category 0 "_background_" (no annotations), file names under JPEGImages/
LABELME_CATEGORIES = [{"id": 0, "name": "_background_"}, {"id": 1, "name": "cat"}, {"id": 2, "name": "dog"},
                      {"id": 3, "name": "bird"}, {"id": 4, "name": "fish"}]


def labelme_dataset(root, num_images=2, written=None, categories=LABELME_CATEGORIES):
    """A COCO json at root/annotations.json of 64 x 48 images, image ids from 0, file_names
    JPEGImages/<i>.jpg, one square per image of the categories after the first; the first `written`
    images (default all) are written. Returns the json's path."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        if written is None or i < written:
            pixels = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "JPEGImages" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"JPEGImages/{i}.jpg", "width": 64, "height": 48})
        category = categories[1 + i % (len(categories) - 1)]["id"]
        annotations.append({"id": i, "image_id": i, "category_id": category, "bbox": [4, 4, 20, 20], "area": 400,
                            "iscrowd": 0, "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]]})
    json_file = root / "annotations.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(json_file)


def ground_truth_as_detections(gt):
    """Instances of detections (pred_boxes, pred_classes, scores 1) at the ground truth's boxes."""
    det = Instances(gt.image_size)
    det.pred_boxes = gt.gt_boxes
    det.pred_classes = gt.gt_classes
    det.scores = torch.ones(len(gt))
    return det


def build_fcos(**overrides):
    """A small FCOS (32 channels, 3 classes, P3-P7) with MODEL.FCOS keys overridden."""
    cfg = get_project_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.FCOS.SIZES_OF_INTEREST = [32, 64, 128, 256]
    for key, value in overrides.items():
        setattr(cfg.MODEL.FCOS, key, value)
    shapes = {f"p{i}": ShapeSpec(channels=32, stride=2**i) for i in range(3, 8)}
    return FCOS(cfg, shapes)


def fcos_features(fcos, size=128, seed=0):
    """Random P3-P7 maps of two size x size images for build_fcos's FCOS."""
    g = torch.Generator().manual_seed(seed)
    return {f"p{i}": torch.randn(2, 32, size // 2**i, size // 2**i, generator=g) for i in range(3, 8)}


def two_images_gt():
    """Ground truth of two 128 x 128 images: two boxes of class 0 in the first, one in the second."""
    gt = []
    for boxes in ([[4.0, 6.0, 40.0, 50.0], [30.0, 30.0, 100.0, 90.0]], [[10.0, 10.0, 60.0, 40.0]]):
        inst = Instances((128, 128))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        gt.append(inst)
    return gt
