"""What the entry points use (projects/train_net.py, demo.py, the README): the project config,
the one trainer and the predictor of every method, with their parts.

One module per role: config building is instseg.config; trainer.py (Trainer), hooks.py
(KeepingCheckpointer), predictor.py (Predictor), mixed_precision.py (inference under autocast),
memory_format.py (channels-last models).
"""
from ..config import build_config
from .hooks import KeepingCheckpointer
from .memory_format import to_memory_format
from .mixed_precision import MixedPrecisionInference, mixed_precision, outputs_in_float32
from .predictor import Predictor, prediction_metadata
from .trainer import CPUMixedPrecisionTrainer, Trainer, evaluation_dir

__all__ = [
    "CPUMixedPrecisionTrainer",
    "KeepingCheckpointer",
    "MixedPrecisionInference",
    "Predictor",
    "Trainer",
    "build_config",
    "evaluation_dir",
    "mixed_precision",
    "outputs_in_float32",
    "prediction_metadata",
    "to_memory_format",
]
