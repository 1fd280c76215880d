"""Config keys of CenterMask (add_centermask_config). FCOS keys are shared: instseg/config.py."""
from detectron2.config import CfgNode as CN


def add_centermask_config(cfg: CN) -> None:
    """Add CenterMask's keys to `cfg` in place; names as in centermask2, so its yaml files merge."""
    cfg.MODEL.VOVNET = CN()
    # one of centermask.vovnet.VOVNET_SPECS: V-19-slim-dw-eSE, V-19-slim-eSE, V-19-eSE, V-39-eSE, ...
    cfg.MODEL.VOVNET.CONV_BODY = "V-39-eSE"
    cfg.MODEL.VOVNET.OUT_FEATURES = ["stage2", "stage3", "stage4", "stage5"]
    cfg.MODEL.VOVNET.NORM = "FrozenBN"  # any detectron2 norm: FrozenBN, BN, SyncBN, GN
    # RoI-to-FPN-level rule of the mask pooler: "area" (Mask R-CNN, Eq. 1) or "ratio" (CenterMask's
    # adaptive assignment, Eq. 2)
    cfg.MODEL.ROI_MASK_HEAD.ASSIGN_CRITERION = "area"
    # MaskIoU head: predicts each mask's IoU with its ground truth; at test time the detections get
    # mask_scores = scores x that IoU (centermask2's field; scores stays FCOS's), which mask AP ranks by
    cfg.MODEL.MASKIOU_ON = False
    cfg.MODEL.MASKIOU_LOSS_WEIGHT = 1.0
    cfg.MODEL.ROI_MASKIOU_HEAD = CN()
    cfg.MODEL.ROI_MASKIOU_HEAD.NAME = "MaskIoUHead"
    cfg.MODEL.ROI_MASKIOU_HEAD.CONV_DIM = 256
    cfg.MODEL.ROI_MASKIOU_HEAD.NUM_CONV = 4
