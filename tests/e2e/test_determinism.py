"""Training is reproducible: one config and SEED give bit-identical weights on one machine, for every
method, also when a process trains twice (tests, notebooks), so that two runs that differ can be told
apart by their code, not by chance. It breaks with randomness that SEED does not reach, a kernel whose
sums depend on thread timing, or state that a first training leaves behind: fvcore's TorchScript focal
loss switched to a fused backward after its first calls, so that FCOS's first training in a process
got other gradients than the next ones.

Each config is trained twice in a fresh process (this file run as a script), as the pytest process
may have run FCOS already."""
import sys

import pytest
import torch
from detectron2.utils.env import seed_all_rng
from helpers import CONFIGS, TINY, run

from instseg.engine import Trainer, build_config

pytestmark = pytest.mark.slow


def _train(config: str, output_dir: str) -> dict:
    opts = TINY + ["DATALOADER.NUM_WORKERS", "1", "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu",
                   "OUTPUT_DIR", output_dir]
    cfg = build_config(config, opts)
    seed_all_rng(cfg.SEED)  # what projects/train_net.py's default_setup does
    trainer = Trainer(cfg)
    trainer.train()
    return trainer.model.state_dict()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.split("/")[1])
def test_same_seed_trains_to_identical_weights(config, tmp_path):
    out = run(__file__, config, str(tmp_path))
    assert "identical weights" in out, out[-3000:]


if __name__ == "__main__":
    config, output_dir = sys.argv[1:]
    first, second = _train(config, f"{output_dir}/first"), _train(config, f"{output_dir}/second")
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"two runs of {config} with SEED set differ in {different[:5]}"
    print("identical weights")
