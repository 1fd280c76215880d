"""Config keys of BlendMask (add_blendmask_config); key names as in AdelaiDet. FCOS keys are shared:
instseg/config.py. The number of classes is MODEL.ROI_HEADS.NUM_CLASSES."""
from detectron2.config import CfgNode as CN

BLENDER_IMPLS = ("fused", "reference")


def add_blendmask_config(cfg: CN) -> None:
    """Add BlendMask's keys to `cfg` in place."""
    # bottom module: predicts NUM_BASES bases at stride 4 from the FPN levels IN_FEATURES
    cfg.MODEL.BASIS_MODULE = CN()
    cfg.MODEL.BASIS_MODULE.NUM_BASES = 4  # K in the paper
    cfg.MODEL.BASIS_MODULE.CONVS_DIM = 128
    cfg.MODEL.BASIS_MODULE.IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.BASIS_MODULE.NORM = "SyncBN"
    cfg.MODEL.BASIS_MODULE.NUM_CONVS = 3  # 3x3 convs of the tower before the 2x upsampling
    # auxiliary semantic segmentation on IN_FEATURES[0]; its targets are made from the instance masks
    cfg.MODEL.BASIS_MODULE.LOSS_ON = False
    cfg.MODEL.BASIS_MODULE.LOSS_WEIGHT = 0.3
    cfg.MODEL.BLENDMASK = CN()
    cfg.MODEL.BLENDMASK.ATTN_SIZE = 14  # M: attentions are K x M x M per box
    cfg.MODEL.BLENDMASK.TOP_INTERP = "bilinear"  # how attentions are resized to R x R: or "nearest"
    cfg.MODEL.BLENDMASK.BOTTOM_RESOLUTION = 56  # R: bases are cropped to R x R per box
    cfg.MODEL.BLENDMASK.POOLER_TYPE = "ROIAlignV2"  # "ROIAlignV2" (aligned) or "ROIAlign"
    cfg.MODEL.BLENDMASK.POOLER_SAMPLING_RATIO = 1
    cfg.MODEL.BLENDMASK.POOLER_SCALES = (0.25,)  # 1 / stride of the bases
    cfg.MODEL.BLENDMASK.INSTANCE_LOSS_WEIGHT = 1.0
    # "fused": this project's blender op (csrc/blender); "reference": plain PyTorch composition
    cfg.MODEL.BLENDMASK.BLENDER_IMPL = "fused"
