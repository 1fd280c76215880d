import os

import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the embedded dataset is generated once (cached) under the repo's datasets/, as `make demo` does
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture
def two_box_batch():
    """A 128 x 128 image with two boxed rectangular instances (classes 0 and 2), as the model input
    of one image: [{"image", "instances", "height", "width"}]."""
    image = torch.randint(0, 255, (3, 128, 128), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    inst = Instances((128, 128))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 60.0, 120.0, 100.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    masks = torch.zeros(2, 128, 128, dtype=torch.bool)
    masks[0, 12:70, 10:60] = True
    masks[1, 60:100, 70:120] = True
    inst.gt_masks = BitMasks(masks)
    return [{"image": image.float(), "instances": inst, "height": 128, "width": 128}]
