"""Every method predicts under CPU mixed precision (torch.autocast, bfloat16), as detectron2's own
Mask R-CNN does with torchvision's RoIAlign: this project's ops, poolers and conv2d_at keep the dtypes
detectron2 expects."""
import pytest
import torch
from detectron2.modeling import build_model
from helpers import CONFIGS

from instseg.engine import build_config

# every detection kept so that the mask branches run
ZERO_THRESHOLDS = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.FCOS.INFERENCE_TH_TEST", "0.0"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.split("/")[1])
def test_predicts_under_bfloat16_autocast(config):
    torch.manual_seed(0)
    model = build_model(build_config(config, ZERO_THRESHOLDS)).eval()
    image = torch.randint(0, 256, (3, 128, 160), generator=torch.Generator().manual_seed(0)).float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = model([{"image": image, "height": 256, "width": 320}])
    instances = out["instances"]
    assert len(instances) > 0
    assert instances.pred_masks.dtype == torch.bool and instances.pred_masks.shape[1:] == (256, 320)
    assert torch.isfinite(instances.pred_boxes.tensor).all() and torch.isfinite(instances.scores).all()
