"""The file paths and config keys of the README, the methods' READMEs and docs/ exist, the README's
KEY VALUE options are accepted, and CI runs its test command: a renamed file or key would otherwise
leave a command in the documentation that fails for the user who copies it."""
import re
import shlex
from pathlib import Path

import pytest

from instseg.config import _all_keys, build_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
METHOD_READMES = [ROOT / method / "README.md" for method in ("blendmask", "centermask", "refinemask")]
DOCS = [ROOT / "README.md", *METHOD_READMES, *sorted((ROOT / "docs").rglob("*.md"))]

REPO_PATH = re.compile(
    r"\b(?:configs|projects|docs|instseg|csrc|third_party|tests|blendmask|centermask|refinemask)/[\w./-]*"
)
CONFIG_KEY = re.compile(r"\b(?:MODEL|SOLVER|TEST|INPUT|DATASETS|DATALOADER)(?:\.[A-Z0-9_]+)+\b")
# The README names this AdelaiDet key to say that it does not exist here.
UPSTREAM_ONLY_KEYS = {"MODEL.FCOS.NUM_CLASSES"}


@pytest.mark.parametrize(
    "doc, path",
    sorted({(d.relative_to(ROOT).as_posix(), p) for d in DOCS for p in REPO_PATH.findall(d.read_text())}),
)
def test_documented_paths_exist(doc, path):
    assert (ROOT / path.rstrip(".")).exists(), f"{doc} names {path}, which is not in the repository"


@pytest.mark.parametrize("doc", [d.relative_to(ROOT).as_posix() for d in DOCS])
def test_documented_config_keys_exist(doc):
    cfg = build_config()
    missing = sorted(set(CONFIG_KEY.findall((ROOT / doc).read_text())) - UPSTREAM_ONLY_KEYS - set(_all_keys(cfg)))
    assert not missing, f"{doc} names config keys that do not exist: {missing}"
    assert "NUM_CLASSES" not in cfg.MODEL.FCOS  # the README says so


def _code_in_readme():
    """The README's fenced code blocks (line continuations joined) and inline code spans."""
    blocks = [b.replace("\\\n", " ") for b in re.findall(r"```[a-z]*\n(.*?)```", README, re.DOTALL)]
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def _key_value_pairs():
    pairs = []
    for code in _code_in_readme():
        words = shlex.split(code)
        pairs += [(key, value) for key, value in zip(words, words[1:]) if CONFIG_KEY.fullmatch(key)]
    return pairs


def test_readme_key_value_options_are_accepted():
    pairs = _key_value_pairs()
    assert ("SOLVER.AMP.ENABLED", "True") in pairs  # the parsing finds the options
    base = build_config()
    for key, value in pairs:
        cfg = base.clone()
        cfg.defrost()
        cfg.merge_from_list([key, value])  # raises on a wrong type, e.g. an int for a float key


def test_ci_runs_the_readme_test_command():
    command = re.search(r"^(make \w+)\s+# install, run the tests", README, re.MULTILINE).group(1)
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    assert command in [line.strip() for line in ci_lines], f".ci/run does not call {command!r}"
