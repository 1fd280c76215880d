"""MODEL.CHANNELS_LAST: every method built with NHWC weights (so NHWC feature maps) predicts as in
NCHW up to float rounding, through the Predictor, and trains through the Trainer."""
import numpy as np
import pytest
import torch
from helpers import CONFIGS, RANDOM_WEIGHTS, TINY, ZERO_THRESHOLDS

from instseg.checkpoint import Checkpointer
from instseg.engine import Predictor, Trainer, build_config
from instseg.layers.memory_format import is_channels_last


def _predict(config, channels_last, image):
    torch.manual_seed(0)  # the same random weights in both formats
    predictor = Predictor(build_config(config, ZERO_THRESHOLDS + RANDOM_WEIGHTS + ["MODEL.CHANNELS_LAST", str(channels_last)]))
    maps = []
    predictor.model.backbone.register_forward_hook(lambda m, i, out: maps.extend(out.values()))
    return predictor(image)["instances"], maps


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.split("/")[1])
def test_predictor_in_channels_last_predicts_as_in_nchw(config):
    image = np.random.RandomState(0).randint(0, 256, (128, 160, 3), dtype=np.uint8)
    nchw, nchw_maps = _predict(config, False, image)
    nhwc, nhwc_maps = _predict(config, True, image)
    assert all(is_channels_last(m) for m in nhwc_maps) and not any(is_channels_last(m) for m in nchw_maps)
    assert len(nchw) == len(nhwc) > 0
    torch.testing.assert_close(nhwc.scores, nchw.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(nhwc.pred_boxes.tensor, nchw.pred_boxes.tensor, atol=1e-2, rtol=0)
    assert (nhwc.pred_masks != nchw.pred_masks).float().mean() < 1e-3


@pytest.mark.slow
def test_trainer_trains_channels_last_and_its_checkpoint_loads_into_nchw(tmp_path):
    config = CONFIGS[3]  # RefineMask: FPN, RPN, box and mask heads and the semantic head
    opts = TINY + ["MODEL.CHANNELS_LAST", "True", "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)",
                   "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)]
    trainer = Trainer(build_config(config, opts))
    maps = []
    trainer.model.backbone.register_forward_hook(lambda m, i, out: maps.append(out["p2"]))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert len(maps) == 2 and all(is_channels_last(m) for m in maps)
    after = trainer.model.state_dict()
    assert is_channels_last(after["backbone.fpn_output2.weight"])
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("roi_heads.mask_head."))
    nchw = Trainer.build_model(build_config(config, ["MODEL.DEVICE", "cpu"]))
    Checkpointer(nchw).load(str(tmp_path / "model_final.pth"))
    for key, value in nchw.state_dict().items():
        assert torch.equal(value, after[key]), key
    assert nchw.state_dict()["backbone.fpn_output2.weight"].is_contiguous()
