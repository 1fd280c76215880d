"""Registering a user's COCO json (--register-coco NAME JSON IMAGE_ROOT): image paths checked at
once, class names known before the data is loaded, errors that name the right dataset and say what
to do (issue 26, points 5 and 6)."""
import itertools

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import labelme_dataset

from instseg.data.datasets import register_coco_instances
from instseg.engine import build_config

SHAPES = "configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml"
_names = (f"user_data_{i}" for i in itertools.count())


def test_missing_images_are_found_at_registration_with_the_root_used(tmp_path):
    json_file = labelme_dataset(tmp_path, num_images=8, written=1)
    root = str(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        register_coco_instances(next(_names), json_file, root)
    message = str(error.value)
    assert f"7 of the 8 images of {json_file} are not under IMAGE_ROOT {root!r}" in message
    assert f"'{root}/JPEGImages/1.jpg'" in message and f"'{root}/JPEGImages/5.jpg'" in message
    assert "6.jpg" not in message and "and 2 more" in message


def test_image_root_that_doubles_the_file_names_folder_gets_the_right_one(tmp_path):
    json_file = labelme_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"JPEGImages/JPEGImages/0\.jpg.*is under '{tmp_path}': use that folder as IMAGE_ROOT"):
        register_coco_instances(next(_names), json_file, str(tmp_path / "JPEGImages"))
    register_coco_instances(next(_names), json_file, str(tmp_path))


def test_not_a_coco_json_is_named(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"a\.json is not a JSON file"):
        register_coco_instances(next(_names), str(tmp_path / "a.json"), str(tmp_path))
    (tmp_path / "b.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"b\.json has no 'categories'"):
        register_coco_instances(next(_names), str(tmp_path / "b.json"), str(tmp_path))


def test_class_names_are_known_at_registration_as_loading_sets_them(tmp_path):
    categories = [{"id": 5, "name": "e"}, {"id": 0, "name": "_background_"}, {"id": 2, "name": "b"}]
    name = next(_names)
    register_coco_instances(name, labelme_dataset(tmp_path, categories=categories), str(tmp_path))
    metadata = MetadataCatalog.get(name)
    assert metadata.thing_classes == ["_background_", "b", "e"]
    assert metadata.thing_dataset_id_to_contiguous_id == {0: 0, 2: 1, 5: 2}
    dicts = DatasetCatalog.get(name)  # load_coco_json sets the same metadata: no conflict
    assert [a["category_id"] for d in dicts for a in d["annotations"]] == [0, 1]
    name = next(_names)
    register_coco_instances(name, labelme_dataset(tmp_path / "five"), str(tmp_path / "five"))
    with pytest.raises(ValueError, match=rf"NUM_CLASSES is 3 but dataset '{name}' has 5 classes"):
        build_config(SHAPES, ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"])


@pytest.fixture
def five_classes(tmp_path):
    name = next(_names)
    register_coco_instances(name, labelme_dataset(tmp_path), str(tmp_path))
    return name


def test_evaluation_checks_the_classes_of_the_test_data_only(five_classes):
    # the case: the shapes config with only DATASETS.TEST overridden
    test_only = ["DATASETS.TEST", f"('{five_classes}',)"]
    with pytest.raises(ValueError, match=rf"NUM_CLASSES is 3 but dataset '{five_classes}' has 5 classes.*NUM_CLASSES 5$"):
        build_config(SHAPES, test_only, task="eval")
    build_config(SHAPES, test_only + ["MODEL.ROI_HEADS.NUM_CLASSES", "5"], task="eval")
    with pytest.raises(ValueError, match="dataset 'shapes_train' has 3 classes"):  # training reads shapes_train
        build_config(SHAPES, test_only + ["MODEL.ROI_HEADS.NUM_CLASSES", "5"])


def test_evaluation_points_to_the_runs_saved_config(five_classes, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(build_config(SHAPES, ["MODEL.ROI_HEADS.NUM_CLASSES", "5", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]).dump())
    opts = ["DATASETS.TEST", f"('{five_classes}',)", "MODEL.WEIGHTS", str(run / "model_final.pth")]
    with pytest.raises(ValueError, match=rf"NUM_CLASSES 5, or use the config of the run that wrote MODEL.WEIGHTS: --config-file {run}/config.yaml"):
        build_config(SHAPES, opts, task="eval")


def test_unregistered_dataset_says_how_to_register_it():
    for task, key in (("train", "TRAIN"), ("eval", "TEST")):
        with pytest.raises(KeyError) as error:
            build_config(SHAPES, [f"DATASETS.{key}", "('my_val',)"], task=task)
        message = str(error.value)
        assert f"DATASETS.{key} names dataset 'my_val', which is not registered" in message
        assert "--register-coco my_val JSON IMAGE_ROOT" in message and "coco_2017_train" not in message
    build_config(SHAPES, ["DATASETS.TRAIN", "('my_train',)"], task="eval")  # evaluation does not read it
    build_config(SHAPES, ["DATASETS.TEST", "('my_val',)"], task="predict")  # only a source of class names
