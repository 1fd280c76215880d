"""Config keys of RefineMask (add_refinemask_config). Names of the official code's arguments are
given where they differ."""
from detectron2.config import CfgNode as CN


def add_refinemask_config(cfg: CN) -> None:
    """Add RefineMask's keys to `cfg` in place."""
    cfg.MODEL.REFINEMASK = CN()
    # semantic head: NUM_SEMANTIC_CONVS 3x3 convs on SEMANTIC_IN_FEATURE (P2) + a 1x1 foreground classifier
    cfg.MODEL.REFINEMASK.SEMANTIC_IN_FEATURE = "p2"
    cfg.MODEL.REFINEMASK.NUM_SEMANTIC_CONVS = 4
    cfg.MODEL.REFINEMASK.SEMANTIC_LOSS_WEIGHT = 1.0  # of the foreground classifier (RefineMaskHead only)
    cfg.MODEL.REFINEMASK.CONV_DIM = 256  # width of the semantic head and of the instance convs
    # mask head ("mask_head.type"): "RefineMaskHead", the paper's, or "SimpleRefineMaskHead", the official
    # "faster-better" variant (configs/refinemask/coco/r50-refinemask-1x-faster-better.py): its stages
    # fuse no foreground mask (the semantic head has no classifier and no loss), crop the semantic
    # features with one sample per bin and add their global average pool to the dilated branches
    # ("fusion_type" MultiBranchFusionAvg), and classify the last mask before the 2x upsampling
    # ("pre_upsample_last_stage" False)
    cfg.MODEL.REFINEMASK.HEAD = "RefineMaskHead"
    # mask head: NUM_INSTANCE_CONVS 3x3 convs on the RoI features, then a mask at each of STAGE_SIZES
    # ("stage_sup_size"; the first is ROI_MASK_HEAD.POOLER_RESOLUTION): an SFM stage predicts it at
    # each size but the last, whose mask is the last stage's features upsampled 2x and classified
    cfg.MODEL.REFINEMASK.NUM_INSTANCE_CONVS = 2
    cfg.MODEL.REFINEMASK.STAGE_SIZES = [14, 28, 56, 112]
    cfg.MODEL.REFINEMASK.DILATIONS = [1, 3, 5]  # of the SFM's parallel 3x3 convs
    # the last stage predicts one class-agnostic mask ("stage_num_classes" [K, K, K, 1])
    cfg.MODEL.REFINEMASK.CLASS_AGNOSTIC_LAST_STAGE = False
    # boundary-aware refinement: stages after START_STAGE are trained only within BOUNDARY_WIDTH
    # pixels of the previous prediction's or the ground truth's contour; at test time a stage replaces
    # the previous mask within INFERENCE_BOUNDARY_WIDTH pixels of its contour
    cfg.MODEL.REFINEMASK.BOUNDARY_WIDTH = 2
    cfg.MODEL.REFINEMASK.INFERENCE_BOUNDARY_WIDTH = 1
    cfg.MODEL.REFINEMASK.START_STAGE = 1
    cfg.MODEL.REFINEMASK.STAGE_LOSS_WEIGHTS = [0.25, 0.5, 0.75, 1.0]
