"""The one trainer of every method (projects/train_net.py, tests)."""
import logging
import os
import time
import weakref

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, hooks
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter

from ..checkpoint import Checkpointer, TrainingMetadata
from ..config import check_num_classes, check_schedule
from ..data.datasets import load_train_dicts
from ..data.mapper import InstSegDatasetMapper
from ..detectron2_compat import data_loader_iter, inner_trainer, set_inner_trainer, write_metrics
from ..distributed import check_replicas_identical
from ..evaluation import BoundaryCOCOEvaluator
from ..logs import JSONWriter
from ..utils import detectron2_has_compiled_ops
from .hooks import KeepingCheckpointer
from .memory_format import to_memory_format
from .mixed_precision import MixedPrecisionInference

logger = logging.getLogger(__name__)


def evaluation_dir(output_dir: str, dataset_name: str) -> str:
    """Where Trainer.test writes the predictions and results of a dataset (detectron2's layout)."""
    return os.path.join(output_dir, "inference", dataset_name)


class CPUMixedPrecisionTrainer(SimpleTrainer):
    """detectron2's training step with the forward pass (model and losses) under CPU bfloat16
    autocast. detectron2's AMPTrainer needs CUDA (float16 with loss scaling); bfloat16 has float32's
    exponent range, so its losses need no scaling. SimpleTrainer.run_step is written out again rather
    than wrapped, because wrapping it would run the backward pass under autocast too, which PyTorch
    advises against."""

    def run_step(self):
        assert self.model.training, "CPUMixedPrecisionTrainer: the model was put in eval mode"
        start = time.perf_counter()
        data = next(data_loader_iter(self))
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        write_metrics(self, loss_dict, data_time)
        self.optimizer.step()


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with this project's checkpointer (safe loading, atomic saving,
    the training data's class names in every checkpoint, the last SOLVER.CHECKPOINTS_TO_KEEP kept),
    dataset mapper (clear errors on bad images) and evaluator (box, mask and Boundary AP, with or
    without detectron2's compiled ops); SOLVER.AMP.ENABLED also works on a CPU (bfloat16). A
    schedule that does not fit in SOLVER.MAX_ITER is an error (check_schedule); metrics.json is
    valid JSON."""

    def __init__(self, cfg: CfgNode):
        check_schedule(cfg)  # before anything is built: a schedule that cannot train is an error
        cpu_amp = cfg.SOLVER.AMP.ENABLED and torch.device(cfg.MODEL.DEVICE).type == "cpu"
        if not cpu_amp:
            super().__init__(cfg)
            return
        # DefaultTrainer would build its CUDA-only AMPTrainer (and warn that it disables loss
        # scaling): build its SimpleTrainer, then hand its iterator to our step. Not a second one
        # over the loader: with DATALOADER.NUM_WORKERS 0 it would share the first one's
        # aspect-ratio buckets and never yield.
        without_amp = cfg.clone()
        without_amp.defrost()
        without_amp.SOLVER.AMP.ENABLED = False
        super().__init__(without_amp)
        self.cfg = cfg
        set_inner_trainer(self, CPUMixedPrecisionTrainer(self.model, data_loader_iter(inner_trainer(self)), self.optimizer))

    @classmethod
    def build_model(cls, cfg):
        return to_memory_format(super().build_model(cfg), cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before asking for the hooks; the
        # checkpoint hook and resume_or_load must use ours.
        self.checkpointer = Checkpointer(
            self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self), metadata=TrainingMetadata(self.cfg.DATASETS.TRAIN)
        )
        keeper = KeepingCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD, self.cfg.SOLVER.CHECKPOINTS_TO_KEEP)
        return [keeper if isinstance(h, hooks.PeriodicCheckpointer) else h for h in super().build_hooks()]

    def build_writers(self):
        """detectron2's default writers, with metrics.json as valid JSON (NaN written as null)."""
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    def train(self):
        try:
            results = super().train()
        except FloatingPointError:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            logger.error(
                "training stopped: the loss is not finite (see the error below); the optimizer did not "
                "step on it. Last checkpoint: %s. Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS, "
                "then continue with --resume.",
                last or "none yet",
            )
            raise
        if comm.get_world_size() > 1:
            check_replicas_identical(self.model)
            logger.info("model weights are identical on all %d processes", comm.get_world_size())
        return results

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, in mixed precision when cfg.TEST.AUTOCAST names a dtype."""
        if cfg.TEST.AUTOCAST:
            model = MixedPrecisionInference(model, cfg)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = evaluation_dir(cfg.OUTPUT_DIR, dataset_name)
        return BoundaryCOCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            use_fast_impl=detectron2_has_compiled_ops(),
            # COCO's maxDets follows the one bound of every method's detections
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        dataset = load_train_dicts(cfg)
        check_num_classes(cfg)  # the datasets' metadata is complete once they are loaded
        return build_detection_train_loader(cfg, mapper=InstSegDatasetMapper(cfg, True), dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=InstSegDatasetMapper(cfg, False))
