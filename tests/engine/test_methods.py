"""Dependencies point one way: instseg finds the methods through entry points and imports none of
them itself; detectron2's private names are used only by instseg.detectron2_compat, for the pinned
detectron2; another project's `centermask` found first is a clear error."""
import ast
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import detectron2
import pytest
from detectron2.config import get_cfg

from instseg import detectron2_compat
from instseg.config import add_instseg_config, get_project_cfg
from instseg.methods import METHODS_GROUP, method_entry_points, register_method_config

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("blendmask", "centermask", "refinemask")


def run_python(code: str, cwd, pythonpath=()) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter started in `cwd`, with `pythonpath` first on sys.path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(map(str, pythonpath)))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def fake_distribution(root: Path, name: str, entry_points: dict, packages: dict) -> None:
    """An installed distribution `name` under `root` (a sys.path entry): its metadata declares
    `entry_points` (name -> module) of METHODS_GROUP; `packages` maps package -> __init__.py text."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{ep} = {module}\n" for ep, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{METHODS_GROUP}]\n{lines}")
    for package, text in packages.items():
        (root / package).mkdir()
        (root / package / "__init__.py").write_text(textwrap.dedent(text))


def test_every_method_is_an_entry_point_of_the_project():
    declared = {ep.name: ep for ep in method_entry_points()}
    for method in METHODS:
        assert method in declared, f"setup.py declares no {METHODS_GROUP} entry point {method!r} (re-install: make install)"
        assert declared[method].value == method
        assert declared[method].dist.name == "instseg"


def test_project_config_has_every_methods_keys():
    import blendmask
    import centermask
    import refinemask

    expected = get_cfg()
    add_instseg_config(expected)
    blendmask.add_blendmask_config(expected)
    centermask.add_centermask_config(expected)
    refinemask.add_refinemask_config(expected)
    assert get_project_cfg() == expected


def test_registering_a_config_adder_twice_adds_it_once():
    calls = []

    def add_nothing(cfg):
        calls.append(cfg)

    register_method_config(add_nothing)
    register_method_config(add_nothing)
    get_project_cfg()
    assert len(calls) == 1


def test_instseg_modules_import_no_method_package():
    """Importing every module of instseg leaves the method packages unimported."""
    result = run_python(
        f"""
        import pkgutil, importlib, sys
        import instseg
        for module in pkgutil.walk_packages(instseg.__path__, "instseg."):
            importlib.import_module(module.name)
        imported = [m for m in {METHODS!r} if m in sys.modules]
        assert not imported, f"importing instseg imported {{imported}}"
        """,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_no_instseg_file_imports_a_method_package():
    methods = set(METHODS) | {ep.value.partition(":")[0].partition(".")[0] for ep in method_entry_points()}
    for path in sorted((ROOT / "instseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.partition(".")[0] not in methods, f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"


def test_a_fifth_method_plugs_in_through_its_own_distribution(tmp_path):
    fake_distribution(
        tmp_path,
        "fifth-method",
        {"fifth": "fifth_method"},
        {
            "fifth_method": """
            from detectron2.config import CfgNode
            from instseg.methods import register_method_config

            def add_fifth_config(cfg):
                cfg.MODEL.FIFTH = CfgNode()
                cfg.MODEL.FIFTH.DEPTH = 3

            register_method_config(add_fifth_config)
            """
        },
    )
    result = run_python(
        """
        from instseg.config import build_config
        cfg = build_config("configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml", ["MODEL.FIFTH.DEPTH", "5"])
        assert cfg.MODEL.FIFTH.DEPTH == 5 and "BLENDMASK" in cfg.MODEL
        """,
        cwd=ROOT,
        pythonpath=[tmp_path],
    )
    assert result.returncode == 0, result.stderr


def test_an_entry_point_that_fails_to_load_is_named(tmp_path):
    fake_distribution(tmp_path, "broken-method", {"broken": "broken_method"}, {"broken_method": "import no_such_module\n"})
    result = run_python("from instseg.config import get_project_cfg; get_project_cfg()", cwd=ROOT, pythonpath=[tmp_path])
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "ImportError: method entry point 'broken' (broken_method) of broken-method cannot be loaded" in last_line
    assert "no_such_module" in last_line


def test_another_projects_centermask_first_on_sys_path_is_a_clear_error(tmp_path):
    """centermask2's top-level package is also `centermask`: found first, it would register FCOS a
    second time (a registry assertion); the error names its file and the clash instead, before it runs."""
    other = tmp_path / "centermask2"
    (other / "centermask").mkdir(parents=True)
    (other / "centermask" / "__init__.py").write_text("raise AssertionError('this file must not run')\n")
    result = run_python("from instseg.config import get_project_cfg; get_project_cfg()", cwd=tmp_path, pythonpath=[other])
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: method entry point 'centermask'"), result.stderr
    assert str(other / "centermask" / "__init__.py") in last_line
    assert "centermask2" in last_line and "cannot share one sys.path" in last_line
    assert "must not run" not in result.stderr


def _pinned_sdist() -> str:
    path = ROOT / "third_party" / "detectron2" / "install.py"
    spec = importlib.util.spec_from_file_location("detectron2_install", path)
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    return install.SDIST


def test_installed_detectron2_is_the_pinned_one():
    assert _pinned_sdist() == f"pb1-detectron2=={detectron2_compat.DETECTRON2_VERSION}"
    assert detectron2.__version__.partition("+")[0] == detectron2_compat.DETECTRON2_VERSION, (
        f"detectron2 {detectron2.__version__} is installed; instseg.detectron2_compat is written for "
        f"{detectron2_compat.DETECTRON2_VERSION}: follow its docstring to upgrade"
    )


@pytest.mark.parametrize(
    "owner, name",
    [(owner, name) for owner, names in detectron2_compat.PRIVATE_NAMES.items() for name in names],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_each_private_name_the_compat_module_uses_exists(owner, name):
    """A method or module global is an attribute; an instance attribute is assigned in the source."""
    assert hasattr(owner, name) or f"self.{name} = " in inspect.getsource(owner), (
        f"{owner.__name__} has no {name} in detectron2 {detectron2.__version__}"
    )


def test_only_the_compat_module_uses_detectron2_private_names():
    names = {name for names in detectron2_compat.PRIVATE_NAMES.values() for name in names}
    compat = ROOT / "instseg" / "detectron2_compat.py"
    for path in sorted((ROOT / "instseg").rglob("*.py")):
        if path == compat:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in names:
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.attr}: go through instseg.detectron2_compat")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("detectron2", "fvcore"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(ROOT)}:{node.lineno} imports {private}: go through instseg.detectron2_compat"


@pytest.mark.parametrize("method", ["BlendMask", "CenterMask", "RefineMask"])
def test_every_config_of_a_method_names_its_meta_architecture(method):
    from instseg.config import build_config

    configs = sorted((ROOT / "configs" / method).glob("*.yaml"))
    assert configs
    for path in configs:
        assert build_config(path).MODEL.META_ARCHITECTURE == method, path
