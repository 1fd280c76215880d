"""Run a trained model on images and save pictures of its predictions (DefaultPredictor + Visualizer).

    python projects/demo.py --config-file configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml \\
        --input datasets/shapes/val --output output/pictures \\
        --opts MODEL.WEIGHTS output/mask_rcnn_R_18_FPN_shapes/model_final.pth

--input takes image files and folders (every .jpg/.jpeg/.png/.bmp inside is used).
"""
import argparse
import os

import instseg  # noqa: F401  (first: quiets the warnings detectron2 and fvcore raise on import)
import cv2
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from instseg.data.mapper import read_image
from instseg.engine import Predictor, build_config

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


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


def draw_predictions(predictor: Predictor, image_bgr, metadata, threshold: float):
    """Predict on one BGR image; returns the RGB picture of the predicted instances."""
    instances = shown_instances(predictor(image_bgr)["instances"].to("cpu"), threshold)
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--max-images", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = parser.parse_args()
    setup_logger(name="instseg")

    # the R-CNN heads' threshold is on their final score; FCOS's is on the class score before
    # centerness and MaskIoU, so its detections are filtered by shown_instances instead
    cfg = build_config(args.config_file, list(args.opts) + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(args.confidence_threshold)])
    predictor = Predictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    os.makedirs(args.output, exist_ok=True)
    paths = list_images(args.input)
    if args.max_images:
        paths = paths[: args.max_images]
    for path in paths:
        picture = draw_predictions(predictor, read_image(path, format="BGR"), metadata, args.confidence_threshold)
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".jpg")
        cv2.imwrite(out, picture[:, :, ::-1])
    print(f"wrote {len(paths)} pictures to {args.output}")


if __name__ == "__main__":
    main()
