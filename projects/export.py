"""Export a model end to end to ONNX (run by ONNX Runtime), to TorchScript (a trace) or to a
torch.export ExportedProgram.

    python projects/export.py --config-file configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml \\
        --format onnx --output output/mask_rcnn.onnx \\
        --opts MODEL.WEIGHTS output/mask_rcnn_R_18_FPN_shapes/model_final.pth
    python projects/export.py --config-file ... --format torchscript --output output/mask_rcnn.ts
    python projects/export.py --config-file ... --format exported-program --output output/mask_rcnn.pt2

The exported model takes one (3, H, W) float32 image: resized as the config's test transform
(INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST), in INPUT.FORMAT channel order, 0-255 values; H and W are
dynamic (any size in ONNX and TorchScript; in the ExportedProgram from the coarsest feature map's
stride + 1 pixels, 65 for Mask R-CNN and 129 for FCOS's P7, to 4096). It returns the final
detections: boxes (D, 4) in that image's coordinates, scores (D,), classes (D,) int64 and
mask_probs (D, 1, M, M) that detectron2's paste_masks_in_image turns into full-size masks
(instseg.export.OnnxPredictor / TorchScriptPredictor / ProgramPredictor do all of it, with
instseg.engine.Predictor's interface; docs/export.md). A model or module without an export path is
an error naming the module and why; nothing is written then.
"""
import argparse
import os
import sys

import instseg  # noqa: F401  (first: quiets the warnings detectron2 and fvcore raise on import)
import torch
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from instseg.checkpoint import load_inference_weights
from instseg.engine import build_config
from instseg.export import FORMATS, UnsupportedExportError, build_export_module, example_image, export
from instseg.export.exporter import DEFAULT_EXTENSIONS, min_side


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", help="the file to write (default: OUTPUT_DIR/model.onnx, model.ts or model.pt2)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    setup_logger(name="instseg")
    # exported on the CPU: the graph does not depend on the device, ONNX Runtime picks its own
    cfg = build_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"], task="predict")
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "model" + DEFAULT_EXTENSIONS[args.format])
    model = build_model(cfg).eval()
    saved = load_inference_weights(model, cfg)
    try:
        module = build_export_module(model)
        side = max(cfg.INPUT.MIN_SIZE_TEST, min_side(module) + 31)
        image = example_image(side, side * 5 // 4)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with torch.no_grad():
            export(module, args.format, output, image, metadata=saved.get("metadata"))
    except UnsupportedExportError as e:
        if os.path.exists(output) and args.format == "onnx":
            os.remove(output)  # never leave a partial graph behind
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.format} {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
