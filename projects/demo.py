"""Run a trained model on images: pictures of its predictions and/or a COCO results json.

    python projects/demo.py --config-file configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml \\
        --input datasets/shapes/val --output output/pictures \\
        --opts MODEL.WEIGHTS output/mask_rcnn_R_18_FPN_shapes/model_final.pth
    python projects/demo.py --config-file output/my_run/config.yaml --input data/JPEGImages \\
        --output-json output/my_run/results.json --coco-json data/val.json \\
        --opts MODEL.WEIGHTS output/my_run/model_final.pth

--input takes image files and folders (every .jpg/.jpeg/.png/.bmp inside is used). Classes are
labelled by the names a training checkpoint holds, else by those of the registered DATASETS.TEST[0]
(--register-coco NAME JSON IMAGE_ROOT registers one, as in train_net.py). --output-json writes the
detections shown in the pictures (score >= --confidence-threshold) as COCO results: RLE masks, boxes
XYWH, the dataset's category ids where known, image ids of --coco-json matched by file name
(else 1, 2, ... in the order of the images), and each image's path as "file_name".
"""
import argparse
import json
import os

import instseg  # noqa: F401  (first: quiets the warnings detectron2 and fvcore raise on import)
import cv2
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from instseg.data.datasets import register_coco_datasets
from instseg.data.mapper import read_image
from instseg.engine import Predictor, build_config

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# --backend of an exported file -> the projects/export.py --format that wrote it
BACKEND_FORMATS = {"onnxruntime": "onnx", "torchscript": "torchscript", "exported-program": "exported-program"}


def list_images(inputs):
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"--input {item!r} is neither an image file nor a folder")
    if not paths:
        raise FileNotFoundError(f"--input {inputs} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def shown_instances(instances, threshold: float):
    """The detections a picture shows, each labelled with the score of what is drawn: mask_scores
    where the model gives them (CenterMask's MaskIoU rescoring), else scores; those below
    `threshold` are left out, so the threshold applies to the score the user sees."""
    if instances.has("mask_scores"):
        instances.scores = instances.mask_scores
    return instances[instances.scores >= threshold]


def draw_predictions(image_bgr, instances, metadata):
    """The RGB picture of `instances` (shown_instances' choice) on a BGR image."""
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()


class ImageIds:
    """The image ids of a COCO json by file name: an input image matches the json image whose
    file_name is the longest trailing part of its path (data/JPEGImages/a.jpg matches
    "JPEGImages/a.jpg" or "a.jpg"), else the only one of its base name."""

    def __init__(self, coco_json: str):
        self.coco_json = coco_json
        with open(coco_json) as f:
            coco = json.load(f)
        self.by_file_name = {os.path.normpath(i["file_name"]): i["id"] for i in coco["images"]}
        by_base_name = {}
        for file_name, image_id in self.by_file_name.items():
            by_base_name.setdefault(os.path.basename(file_name), []).append(image_id)
        self.by_base_name = {name: ids[0] for name, ids in by_base_name.items() if len(ids) == 1}
        self.categories = sorted(coco["categories"], key=lambda c: c["id"])

    def __call__(self, path: str) -> int:
        parts = os.path.normpath(path).split(os.sep)
        for file_name in [os.path.normpath(path)] + [os.path.join(*parts[i:]) for i in range(len(parts))]:
            if file_name in self.by_file_name:
                return self.by_file_name[file_name]
        if parts[-1] in self.by_base_name:
            return self.by_base_name[parts[-1]]
        raise KeyError(f"image {path!r} is not in --coco-json {self.coco_json} (matched by its file_name)")


def dataset_category_ids(metadata, num_classes: int, image_ids=None):
    """category_id of each class index: those of --coco-json's categories (in id order, as training
    numbers them), else those of the training data (the checkpoint's metadata), else the index."""
    if image_ids is not None:
        names = [c["name"] for c in image_ids.categories]
        known = metadata.get("thing_classes")
        if len(names) != num_classes or (known is not None and list(known) != names):
            raise ValueError(
                f"--coco-json {image_ids.coco_json} has the categories {names}, the model predicts "
                f"{known if known is not None else num_classes} classes: pass the json of the data it was trained for"
            )
        return [c["id"] for c in image_ids.categories]
    to_index = metadata.get("thing_dataset_id_to_contiguous_id")
    if to_index is None:
        return list(range(num_classes))
    to_id = {index: dataset_id for dataset_id, index in to_index.items()}
    return [to_id[i] for i in range(num_classes)]


def coco_results(instances, image_id: int, category_ids, file_name: str):
    """The COCO results of one image's shown detections (detectron2's instances_to_coco_json:
    RLE masks, XYWH boxes), with dataset category ids and the image's file name."""
    results = instances_to_coco_json(instances, image_id)
    for result in results:
        result["category_id"] = category_ids[result["category_id"]]
        result["file_name"] = file_name
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output", help="folder for the pictures")
    parser.add_argument("--output-json", help="write the detections to this COCO results json")
    parser.add_argument("--coco-json", help="COCO json whose image ids (by file name) and category ids --output-json uses")
    parser.add_argument(
        "--register-coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable), e.g. to name DATASETS.TEST's classes",
    )
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--max-images", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument(
        "--backend", choices=("pytorch", *BACKEND_FORMATS), default="pytorch",
        help="what runs the model: pytorch (the eager model of MODEL.WEIGHTS), onnxruntime (a .onnx file), "
        "torchscript (a .ts file) or exported-program (a torch.export .pt2 file), the file projects/export.py "
        "wrote (--model)",
    )
    parser.add_argument("--model", help="the exported file of the onnxruntime, torchscript and exported-program backends")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = parser.parse_args()
    if args.backend != "pytorch" and not args.model:
        parser.error(f"--backend {args.backend} needs --model, the file projects/export.py wrote")
    if args.backend == "pytorch" and args.model:
        parser.error("--model is the exported file of --backend onnxruntime / torchscript / exported-program; "
                     "the pytorch backend loads MODEL.WEIGHTS")
    if not (args.output or args.output_json):
        parser.error("nothing to write: give --output (pictures), --output-json (COCO results) or both")
    setup_logger(name="instseg")
    register_coco_datasets(args.register_coco or [])

    # the R-CNN heads' threshold is on their final score; FCOS's is on the class score before
    # centerness and MaskIoU, so its detections are filtered by shown_instances instead
    opts = list(args.opts) + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(args.confidence_threshold)]
    cfg = build_config(args.config_file, opts, task="predict")
    if args.backend == "pytorch":
        predictor = Predictor(cfg)
    else:  # the exported model keeps every detection it was exported with; the threshold filters here
        from instseg.export import PREDICTORS

        predictor = PREDICTORS[BACKEND_FORMATS[args.backend]](cfg, args.model)
    image_ids = ImageIds(args.coco_json) if args.coco_json else None
    category_ids = dataset_category_ids(predictor.metadata, cfg.MODEL.ROI_HEADS.NUM_CLASSES, image_ids)
    paths = list_images(args.input)
    if args.max_images:
        paths = paths[: args.max_images]
    ids = [image_ids(p) for p in paths] if image_ids else list(range(1, len(paths) + 1))  # all matched first
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    results = []
    for path, image_id in zip(paths, ids):
        image = read_image(path, format="BGR")
        instances = shown_instances(predictor(image)["instances"].to("cpu"), args.confidence_threshold)
        if args.output:
            out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".jpg")
            cv2.imwrite(out, draw_predictions(image, instances, predictor.metadata)[:, :, ::-1])
        results += coco_results(instances, image_id, category_ids, path)
    if args.output:
        print(f"wrote {len(paths)} pictures to {args.output}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f)
        print(f"wrote {len(results)} detections on {len(paths)} images to {args.output_json}")


if __name__ == "__main__":
    main()
