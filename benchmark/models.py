"""The models the benchmark compares, built randomly initialised, their synthetic inputs, and how
they run: the options of device, threads, warm-up, mixed precision and memory format.

Models are randomly initialised (no weights can be downloaded here). So that every model runs its full
mask branch, score thresholds are set to 0: each outputs its maximum number of detections (100; 50 for
CenterMask, whose FCOS keeps 50 at test time; the table shows the count). With random weights and
frozen BatchNorm the backbones' activations blow up and collapse the proposals to a handful, so the
backbones use GroupNorm here (the same change for every model)."""
import argparse
import contextlib

import torch

# name -> (config, test image size (H, W)); the first is the reference of the ratios
SPEED_MODELS = {
    "Mask R-CNN R50-FPN": ("configs/MaskRCNN/mask_rcnn_R_50_FPN_1x.yaml", (800, 1216)),
    "BlendMask R50": ("configs/BlendMask/R_50_1x.yaml", (800, 1216)),
    "BlendMask RT R50 (550)": ("configs/BlendMask/RT_R_50_4x_syncbn_shtw.yaml", (512, 736)),
    "CenterMask V-39": ("configs/CenterMask/centermask_V_39_eSE_FPN_ms_3x.yaml", (800, 1216)),
    "CenterMask-Lite V-19": ("configs/CenterMask/centermask_lite_V_19_eSE_FPN_ms_4x.yaml", (608, 928)),
    "RefineMask R50-FPN": ("configs/RefineMask/refinemask_R_50_FPN_1x.yaml", (800, 1216)),
    "RefineMask faster-better R50-FPN": ("configs/RefineMask/refinemask_faster_better_R_50_FPN_1x.yaml", (800, 1216)),
}
# name -> a *_shapes config, trained on the embedded data; the first is the reference of the ratios
ACCURACY_MODELS = {
    "Mask R-CNN R18-FPN": "configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml",
    "BlendMask R18": "configs/BlendMask/R_18_shapes.yaml",
    "BlendMask R18 P2-P6": "configs/BlendMask/R_18_P2_shapes.yaml",
    "CenterMask-Lite V-19": "configs/CenterMask/centermask_lite_V_19_eSE_shapes.yaml",
    "RefineMask R18-FPN": "configs/RefineMask/refinemask_R_18_FPN_shapes.yaml",
    "RefineMask faster-better R18-FPN": "configs/RefineMask/refinemask_faster_better_R_18_FPN_shapes.yaml",
}
RANDOM_INIT = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.FCOS.INFERENCE_TH_TEST", "0.0",
               "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "GN", "MODEL.VOVNET.NORM", "GN"]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options of how the models run, shared by the speed and parts subcommands and the worker."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--autocast", choices=["bfloat16", "float16"],
        help="run inference (not the training step) under torch.autocast in this dtype",
    )
    parser.add_argument(
        "--channels-last", action="store_true",
        help="build every model with MODEL.CHANNELS_LAST (NHWC weights and feature maps)",
    )


def model_options_argv(args: argparse.Namespace) -> list:
    """`args`' values of add_model_options as command-line arguments, for a measuring subprocess."""
    return [f"--device={args.device}", f"--threads={args.threads}", f"--warmup={args.warmup}"] + (
        [f"--autocast={args.autocast}"] if args.autocast else []) + (["--channels-last"] if args.channels_last else [])


def setting(args: argparse.Namespace) -> str:
    """The inference setting of a run other than the default (float32, NCHW), "" for the default."""
    return " ".join(([args.autocast] if args.autocast else []) + (["channels-last"] if args.channels_last else []))


def synthetic_batch(size, device: str, with_targets: bool) -> list:
    """One random image of `size` (H, W) for inference, or two with 8 boxed instances each for a
    training step, as detectron2's model inputs."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(0)
    height, width = size
    batch = []
    for _ in range(2 if with_targets else 1):
        item = {"image": torch.randint(0, 256, (3, height, width), generator=g).float().to(device),
                "height": height, "width": width}
        if with_targets:
            xy = torch.rand(8, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
            wh = 32 + torch.rand(8, 2, generator=g) * 200
            boxes = torch.cat([xy, xy + wh], dim=1)
            masks = torch.zeros(8, height, width, dtype=torch.bool)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                m[y1:y2, x1:x2] = True
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(boxes)
            inst.gt_classes = torch.randint(0, 80, (8,), generator=g)
            inst.gt_masks = BitMasks(masks)
            item["instances"] = inst
        batch.append(item)
    return batch


def build(name: str, args: argparse.Namespace):
    """The randomly initialised model `name` of SPEED_MODELS in eval mode and its synthetic input
    batch, on `args.device` and in the memory format `args.channels_last` asks for."""
    from detectron2.modeling import build_model

    from instseg.engine import build_config, to_memory_format

    config, size = SPEED_MODELS[name]
    cfg = build_config(config, RANDOM_INIT + ["MODEL.DEVICE", args.device, "MODEL.CHANNELS_LAST", str(args.channels_last)])
    # Every model from the same seed: the parts RefineMask shares with Mask R-CNN (backbone, RPN, box
    # head) get the same weights, so both mask branches get the same proposals and detections, whose
    # sizes set the poolers' cost (adaptive sampling).
    torch.manual_seed(0)
    return to_memory_format(build_model(cfg), cfg).eval(), synthetic_batch(size, args.device, with_targets=False)


@contextlib.contextmanager
def inference_mode(device: str, autocast=None):
    """No autograd and, when `autocast` names a dtype, torch.autocast on `device` in that dtype."""
    from instseg.engine import mixed_precision

    with torch.no_grad(), mixed_precision(device, autocast or ""):
        yield


def infer(model, inputs, device: str, autocast=None):
    """One inference of `model` on `inputs` under inference_mode."""
    with inference_mode(device, autocast):
        return model(inputs)
