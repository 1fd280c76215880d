"""Make detectron2's multi-level ROIPooler run this project's RoIAlign op."""
from detectron2.layers import ROIAlign as D2ROIAlign
from detectron2.modeling.poolers import ROIPooler
from torch import nn

from .roi_align import ROIAlign


def use_instseg_roi_align(pooler: ROIPooler) -> ROIPooler:
    """Swap every detectron2 ROIAlign level of `pooler` for ours with the same parameters, in place.

    ROIPooler keeps its level assignment and batching; only the per-level op changes. Levels of
    other types (ROIPool, ROIAlignRotated) are left alone. Returns `pooler`.
    """
    pooler.level_poolers = nn.ModuleList(
        ROIAlign(p.output_size, p.spatial_scale, p.sampling_ratio, p.aligned)
        if isinstance(p, D2ROIAlign)
        else p
        for p in pooler.level_poolers
    )
    return pooler
