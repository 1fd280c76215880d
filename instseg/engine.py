"""The one trainer and config entry point for every method (projects/train_net.py, demo, tests)."""
import difflib
import logging
import os
import re

from detectron2.config import CfgNode, get_cfg
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer

from .config import add_instseg_config, check_config, check_num_classes
from .evaluation import BoundaryCOCOEvaluator
from .utils import detectron2_has_compiled_ops

logger = logging.getLogger(__name__)


def get_project_cfg() -> CfgNode:
    """detectron2's default config plus the keys of this project and of every method in it.

    Importing the method packages also registers their models in detectron2's registries.
    """
    import blendmask
    import centermask
    import instseg.data  # noqa: F401  (registers the embedded dataset)
    import instseg.modeling  # noqa: F401  (registers FCOS, its backbones, the shared RoI heads)
    import refinemask

    cfg = get_cfg()
    add_instseg_config(cfg)
    blendmask.add_blendmask_config(cfg)
    centermask.add_centermask_config(cfg)
    refinemask.add_refinemask_config(cfg)
    return cfg


def build_config(config_file: str = "", opts=()) -> CfgNode:
    """The project config merged with `config_file` and KEY VALUE `opts`, checked and frozen."""
    cfg = get_project_cfg()
    if config_file and not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    try:
        if config_file:
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:  # yacs reports unknown keys with either
        raise KeyError(_unknown_key_message(cfg, str(e), config_file)) from e
    check_config(cfg)
    cfg.freeze()
    return cfg


def _all_keys(node: CfgNode, prefix: str = ""):
    for name, value in node.items():
        if isinstance(value, CfgNode):
            yield from _all_keys(value, f"{prefix}{name}.")
        else:
            yield prefix + name


# keys of the upstream projects that this project sets in one place instead
REPLACED_KEYS = {
    "MODEL.FCOS.NUM_CLASSES": "MODEL.ROI_HEADS.NUM_CLASSES",
    "MODEL.BASIS_MODULE.NUM_CLASSES": "MODEL.ROI_HEADS.NUM_CLASSES",
}


def _unknown_key_message(cfg: CfgNode, error: str, config_file: str) -> str:
    """yacs's 'Non-existent key: X' with where it came from and the closest known keys."""
    match = re.search(r"([A-Z0-9_]+(?:\.[A-Z0-9_]+)+)", error)
    key = match.group(1) if match else error
    where = f" (in {config_file} or the command-line options)" if config_file else ""
    if key in REPLACED_KEYS:
        return f"unknown config key {key}{where}: the number of classes of every model is set once, in {REPLACED_KEYS[key]}"
    close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.8)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config key {key}{where}{hint}"


def register_coco_datasets(specs) -> None:
    """Register user datasets given as (name, json_file, image_root) triples, e.g. from the CLI."""
    for name, json_file, image_root in specs:
        for path, what in ((json_file, "annotation json"), (image_root, "image folder")):
            if not os.path.exists(path):
                raise FileNotFoundError(f"dataset {name!r}: {what} {path!r} does not exist")
        register_coco_instances(name, {}, json_file, image_root)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer; evaluation reports box, mask and Boundary AP, and works without
    detectron2's compiled ops."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return BoundaryCOCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            use_fast_impl=detectron2_has_compiled_ops(),
        )

    @classmethod
    def build_train_loader(cls, cfg):
        loader = super().build_train_loader(cfg)
        check_num_classes(cfg)  # the datasets' metadata is complete once they are loaded
        return loader
