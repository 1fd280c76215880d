"""The README's file paths and config keys exist, and CI runs its test command: a renamed file or key
would otherwise leave a command in the README that fails for the user who copies it."""
import re
from pathlib import Path

import pytest

from instseg.engine import build_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

REPO_PATH = re.compile(
    r"\b(?:configs|projects|docs|instseg|csrc|third_party|tests|blendmask|centermask|refinemask)/[\w./-]*"
)
CONFIG_KEY = re.compile(r"\b(?:MODEL|SOLVER|TEST|INPUT|DATASETS|DATALOADER)(?:\.[A-Z0-9_]+)+\b")
# The README names this AdelaiDet key to say that it does not exist here.
UPSTREAM_ONLY_KEYS = {"MODEL.FCOS.NUM_CLASSES"}


@pytest.mark.parametrize("path", sorted(set(REPO_PATH.findall(README))))
def test_readme_paths_exist(path):
    assert (ROOT / path.rstrip(".")).exists(), f"README.md names {path}, which is not in the repository"


def test_readme_config_keys_exist():
    cfg = build_config(str(ROOT / "configs/MaskRCNN/Base-MaskRCNN-FPN.yaml"), [])
    missing = []
    for key in sorted(set(CONFIG_KEY.findall(README)) - UPSTREAM_ONLY_KEYS):
        node = cfg
        for part in key.split("."):
            if part not in node:
                missing.append(key)
                break
            node = node[part]
    assert not missing, f"README.md names config keys that do not exist: {missing}"
    assert "NUM_CLASSES" not in cfg.MODEL.FCOS  # the README says so


def test_ci_runs_the_readme_test_command():
    command = re.search(r"^(make \w+)\s+# install, run the tests", README, re.MULTILINE).group(1)
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    assert command in [line.strip() for line in ci_lines], f".ci/run does not call {command!r}"
