"""Every use of detectron2's private names in instseg, in one place, tied to the detectron2 pinned.

Pinned: detectron2 v0.6 (DETECTRON2_VERSION). third_party/detectron2/install.py builds its Python code
from ``pb1-detectron2==0.6`` with a small patch; a detectron2 installed from git at v0.6 is the same
code. detectron2 keeps no promise about these names, so on an upgrade:
1. change DETECTRON2_VERSION and the pin of install.py together (tests/engine/test_methods.py checks that the
   installed detectron2 is the pinned one and that every name of PRIVATE_NAMES still exists);
2. read each name of PRIVATE_NAMES in the new version's source: what it holds and when it is set
   (v0.6 sets SimpleTrainer._data_loader_iter in __init__; later versions make it lazy), and whether
   COCOEvaluator still calls _eval_predictions and _derive_coco_results as the hooks below expect;
3. adapt the functions and classes here; the rest of instseg uses only them.
Not listed: the protected hooks that detectron2 and fvcore leave to subclasses and override in their
own projects (StandardROIHeads._init_*_head, Checkpointer._load_file and _load_model); an upgrade is
checked there by the tests of the RoI heads and checkpoints.
"""
from detectron2.data import DatasetMapper
from detectron2.engine import DefaultTrainer, SimpleTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter
from fvcore.common import checkpoint as fvcore_checkpoint

DETECTRON2_VERSION = "0.6"

# owner -> the private names of it used here (attributes of its instances, methods or module globals)
PRIVATE_NAMES = {
    DefaultTrainer: ("_trainer",),
    SimpleTrainer: ("_data_loader_iter", "_write_metrics"),
    COCOEvaluator: (
        "_predictions", "_tasks", "_tasks_from_predictions", "_output_dir", "_coco_api",
        "_max_dets_per_image", "_logger", "_results", "_eval_predictions", "_derive_coco_results",
    ),
    JSONWriter: ("_file_handle", "_window_size", "_last_write"),
    DatasetMapper: ("_transform_annotations",),
    comm: ("_LOCAL_PROCESS_GROUP",),
    fvcore_checkpoint: ("_filter_reused_missing_keys",),  # fvcore as detectron2 v0.6 requires it
}


# --- training loop: DefaultTrainer runs its iterations through an inner SimpleTrainer


def inner_trainer(trainer: DefaultTrainer) -> SimpleTrainer:
    """The SimpleTrainer (or AMPTrainer) whose run_step a DefaultTrainer calls each iteration."""
    return trainer._trainer


def set_inner_trainer(trainer: DefaultTrainer, inner: SimpleTrainer) -> None:
    """Have `trainer` run its iterations with `inner`'s run_step."""
    trainer._trainer = inner


def data_loader_iter(trainer: SimpleTrainer):
    """The iterator over the data loader that `trainer` draws its batches from."""
    return trainer._data_loader_iter


def write_metrics(trainer: SimpleTrainer, loss_dict: dict, data_time: float) -> None:
    """Log an iteration's losses and data time to the event storage, as SimpleTrainer.run_step does."""
    trainer._write_metrics(loss_dict, data_time)


# --- checkpoints: fvcore's Checkpointer, detectron2's base


def missing_keys_not_reused(model, missing_keys):
    """The missing keys of a load less those whose tensor another (loaded) name of the model shares,
    by fvcore's rule for modules registered under two names."""
    return fvcore_checkpoint._filter_reused_missing_keys(model, missing_keys)


# --- distributed: detectron2's per-machine process group


def set_local_process_group(group) -> None:
    """Make `group` the process group of this machine's processes (comm.get_local_rank and
    get_local_size read it); v0.6 has no public setter, its launch assigns it."""
    comm._LOCAL_PROCESS_GROUP = group


# --- data


def transform_annotations(mapper: DatasetMapper, dataset_dict: dict, transforms, image_shape) -> None:
    """DatasetMapper's own handling of the annotations: transformed, turned into
    dataset_dict["instances"] (masks in INPUT.MASK_FORMAT)."""
    mapper._transform_annotations(dataset_dict, transforms, image_shape)


# --- evaluation and metrics


class COCOEvaluatorHooks(COCOEvaluator):
    """COCOEvaluator with the state and steps a subclass extends under public names. detectron2
    calls the private steps; they call the public ones, which subclasses override (and call through
    super() for detectron2's behaviour)."""

    @property
    def predictions(self) -> list:
        """The predictions of the images processed so far: one dict per image."""
        return self._predictions

    @property
    def tasks(self):
        """The evaluated tasks ("bbox", "segm", ...), or None: found from the predictions."""
        return self._tasks

    @tasks.setter
    def tasks(self, value):
        self._tasks = value

    def tasks_from_predictions(self, results: list) -> set:
        return self._tasks_from_predictions(results)

    @property
    def output_dir(self):
        """Where the results json is written; None writes nothing."""
        return self._output_dir

    @output_dir.setter
    def output_dir(self, value):
        self._output_dir = value

    @property
    def coco_api(self):
        """The ground truth, a pycocotools COCO."""
        return self._coco_api

    @property
    def max_dets_per_image(self):
        return self._max_dets_per_image

    @property
    def logger(self):
        return self._logger

    @property
    def results(self) -> dict:
        """task -> metrics, filled by evaluate()."""
        return self._results

    def _eval_predictions(self, predictions, img_ids=None):
        return self.eval_predictions(predictions, img_ids)

    def eval_predictions(self, predictions: list, img_ids=None):
        """Evaluate `predictions` for every task of `tasks`, into `results`."""
        return COCOEvaluator._eval_predictions(self, predictions, img_ids)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        return self.derive_coco_results(coco_eval, iou_type, class_names)

    def derive_coco_results(self, coco_eval, iou_type: str, class_names=None) -> dict:
        """The metrics of one task from its finished COCOeval (None when there were no detections)."""
        return COCOEvaluator._derive_coco_results(self, coco_eval, iou_type, class_names)


class JSONWriterState(JSONWriter):
    """detectron2's metrics.json writer with its state under public names, for a subclass's write."""

    @property
    def file_handle(self):
        return self._file_handle

    @property
    def window_size(self) -> int:
        """The smoothing window of the scalars that ask for smoothing."""
        return self._window_size

    @property
    def last_write(self) -> int:
        """The last iteration written."""
        return self._last_write

    @last_write.setter
    def last_write(self, iteration: int):
        self._last_write = iteration
