"""The backbone features that a head's config names, checked against what the backbone makes."""
from typing import Dict, List, Sequence

from detectron2.layers import ShapeSpec


def feature_shapes(input_shape: Dict[str, ShapeSpec], names: Sequence[str], key: str) -> List[ShapeSpec]:
    """The shapes of the backbone outputs `names`, read from config key `key`; a ValueError naming
    the key and the backbone's outputs when one is not among them."""
    missing = [name for name in names if name not in input_shape]
    if missing:
        raise ValueError(f"{key} {missing} are not backbone outputs {sorted(input_shape)}")
    return [input_shape[name] for name in names]
