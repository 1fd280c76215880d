"""Small helpers: facts about the installed detectron2."""
import importlib.util


def detectron2_has_compiled_ops() -> bool:
    """True for a detectron2 built with its C++/CUDA ops (detectron2._C), False for the pure-Python
    build that third_party/detectron2/install.py makes."""
    return importlib.util.find_spec("detectron2._C") is not None
