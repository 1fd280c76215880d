"""The methods built on instseg, found without instseg naming them.

A method package (blendmask, centermask, refinemask, or a fifth one in another distribution) does two
things when it is imported: its models register in detectron2's registries, and its config adder
registers here with `register_method_config`. It declares itself as an entry point of the group
METHODS_GROUP in its distribution's metadata (setup.py: ``entry_points={"instseg.methods": ["name =
package"]}``), and `load_methods` imports every such package when the project config is built.
"""
import importlib
import importlib.metadata
import importlib.util
import logging
import os
from typing import Callable, List

from detectron2.config import CfgNode

logger = logging.getLogger(__name__)

METHODS_GROUP = "instseg.methods"
DISTRIBUTION = "instseg"  # setup.py's name: the distribution that ships instseg and its three methods

# top-level package names that other projects use too, and what to tell the user when theirs is found
KNOWN_NAME_CLASHES = {
    "centermask": "centermask2 (the upstream CenterMask code) has a top-level package of the same name; "
    "the two cannot share one sys.path: remove centermask2 from sys.path (PYTHONPATH, an installed "
    "copy, the current directory) to use this project",
}

ConfigAdder = Callable[[CfgNode], None]
_config_adders: List[ConfigAdder] = []


def register_method_config(add_config: ConfigAdder) -> ConfigAdder:
    """Have the project config include a method's keys: `add_config(cfg)` adds them in place.
    Called by a method package when it is imported; registering the same function again does
    nothing. Returns `add_config`, so that it also works as a decorator."""
    if add_config not in _config_adders:
        _config_adders.append(add_config)
    return add_config


def add_method_configs(cfg: CfgNode) -> None:
    """Add the keys of every registered method to `cfg`, in place, in the order they registered."""
    for add_config in _config_adders:
        add_config(cfg)


def method_entry_points() -> list:
    """The entry points of METHODS_GROUP of every installed distribution, sorted by name."""
    return sorted(importlib.metadata.entry_points(group=METHODS_GROUP), key=lambda ep: ep.name)


def load_methods() -> None:
    """Import every method package declared as an entry point of METHODS_GROUP (importing one
    registers its models and its config adder). Raises an ImportError naming the entry point and
    its distribution when one cannot be loaded, or when a package of another project with the same
    name is found first on sys.path."""
    entry_points = method_entry_points()
    if not entry_points:
        logger.warning(
            "no method found in the entry-point group %r: instseg is not installed (pip install -e .), so "
            "only detectron2's and instseg's own config keys are known",
            METHODS_GROUP,
        )
    for entry_point in entry_points:
        distribution = entry_point.dist.name if entry_point.dist else "an unknown distribution"
        where = f"method entry point {entry_point.name!r} ({entry_point.value}) of {distribution}"
        check_not_shadowed(entry_point.module, where, entry_point.dist)
        try:
            entry_point.load()
        except Exception as e:
            raise ImportError(f"{where} cannot be loaded: {type(e).__name__}: {e}") from e


def check_not_shadowed(module_name: str, where: str, distribution=None) -> None:
    """Raise an ImportError, before anything of it runs, when the top-level package that
    `module_name` is in would be imported from elsewhere than where `distribution` installed it."""
    package = module_name.partition(".")[0]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return  # not found at all: loading it gives the usual ImportError, named by load_methods
    expected = _installed_location(package, distribution)
    if expected is None or os.path.samefile(os.path.dirname(spec.origin), expected):
        return
    hint = KNOWN_NAME_CLASHES.get(package, "another package of the same name comes first on sys.path")
    raise ImportError(
        f"{where}: the package {package!r} found first on sys.path is {spec.origin}, not this project's "
        f"(in {expected}): {hint}"
    )


def _installed_location(package: str, distribution) -> str:
    """The folder `distribution` installed `package` into, or None where its metadata does not say:
    a wheel's file list names the package's files; an editable install of instseg's own distribution
    puts the method packages beside instseg, in the source tree."""
    files = (distribution.files or []) if distribution is not None else []
    init = next((f for f in files if f.parts[:1] == (package,) and f.name == "__init__.py" and len(f.parts) == 2), None)
    if init is not None:
        return os.path.dirname(str(distribution.locate_file(init)))
    beside_instseg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), package)
    if distribution is not None and distribution.name == DISTRIBUTION and os.path.isdir(beside_instseg):
        return beside_instseg
    return None
