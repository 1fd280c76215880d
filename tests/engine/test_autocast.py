"""Every method predicts under CPU mixed precision (torch.autocast, bfloat16), as detectron2's own
Mask R-CNN does with torchvision's RoIAlign: this project's ops, poolers and conv2d_at keep the dtypes
detectron2 expects. TEST.AUTOCAST turns it on for the Predictor and the evaluation, SOLVER.AMP.ENABLED
for training on a CPU."""
import numpy as np
import pytest
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers import CONFIGS, RANDOM_WEIGHTS, TINY, ZERO_THRESHOLDS

from instseg.engine import build_config


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


def test_predictor_runs_the_model_under_test_autocast_and_returns_float32():
    from instseg.engine import Predictor

    image = np.random.RandomState(0).randint(0, 256, (128, 160, 3), dtype=np.uint8)
    for dtype, expected in (("bfloat16", torch.bfloat16), ("", torch.float32)):
        torch.manual_seed(0)
        predictor = Predictor(build_config(CONFIGS[0], ZERO_THRESHOLDS + RANDOM_WEIGHTS + ["TEST.AUTOCAST", dtype]))
        seen = []
        predictor.model.backbone.register_forward_hook(lambda m, i, out: seen.append(out["p2"].dtype))
        instances = predictor(image)["instances"]
        assert seen == [expected]
        assert len(instances) > 0 and instances.scores.dtype == torch.float32
        assert instances.pred_boxes.tensor.dtype == torch.float32


class _AutocastSpy(torch.nn.Module):
    """Records whether it runs under CPU autocast, and returns bfloat16 scores as a model under it does."""

    def forward(self, batched_inputs):
        self.autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        instances = Instances((8, 8), scores=torch.ones(1, dtype=torch.bfloat16), pred_boxes=Boxes(torch.ones(1, 4)))
        return [{"instances": instances} for _ in batched_inputs]


class _Outputs(DatasetEvaluator):
    def reset(self):
        self.outputs = []

    def process(self, inputs, outputs):
        self.outputs += outputs

    def evaluate(self):
        return {}


@pytest.mark.parametrize("dtype", ["bfloat16", ""])
def test_evaluation_runs_under_test_autocast_and_sees_float32(dtype, monkeypatch):
    from instseg.engine import Trainer

    cfg = build_config(CONFIGS[0], ["TEST.AUTOCAST", dtype, "MODEL.DEVICE", "cpu"])
    monkeypatch.setattr(Trainer, "build_test_loader", classmethod(lambda cls, cfg, name: [[{"image": None}]]))
    model, outputs = _AutocastSpy().eval(), _Outputs()
    Trainer.test(cfg, model, evaluators=[outputs])
    assert model.autocast == (torch.bfloat16 if dtype else None)
    assert not model.training  # the evaluation leaves the model in the mode it found it in
    (out,) = outputs.outputs
    assert out["instances"].scores.dtype == (torch.float32 if dtype else torch.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.split("/")[1])
def test_amp_training_on_cpu_runs_the_forward_in_bfloat16(config, tmp_path, recwarn):
    from instseg.engine import CPUMixedPrecisionTrainer, Trainer

    opts = TINY + ["SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)",
                   "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)]
    trainer = Trainer(build_config(config, opts))
    assert isinstance(trainer._trainer, CPUMixedPrecisionTrainer) and trainer.cfg.SOLVER.AMP.ENABLED
    assert not [w for w in recwarn if "GradScaler" in str(w.message)]  # no CUDA AMPTrainer was built
    seen = []
    trainer.model.backbone.register_forward_hook(lambda m, i, out: seen.append(next(iter(out.values())).dtype))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert seen == [torch.bfloat16] * 2
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert all(v.dtype == before[k].dtype for k, v in after.items())  # the weights stay float32
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(k.startswith("backbone.") for k in changed) and any("head" in k for k in changed)
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = trainer.model(next(trainer._trainer._data_loader_iter))  # a 2nd iter() would never yield
    assert {k: v.dtype for k, v in losses.items()} == {k: torch.float32 for k in losses}
