"""The file paths and config keys of the README, the methods' READMEs and docs/ exist, the README's
KEY VALUE options are accepted, and CI runs its test command: a renamed file or key would otherwise
leave a command in the documentation that fails for the user who copies it."""
import re
import shlex
from pathlib import Path

import pytest

from instseg.config import _all_keys, build_config

ROOT = Path(__file__).resolve().parents[2]
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


# --- docs/: links, config file names, benchmark commands; the README's size; the configs' comments ---

def _without_fenced_code(text):
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def _anchors(markdown):
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _without_fenced_code(markdown), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _relative_links(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_fenced_code(doc.read_text())):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            yield target


@pytest.mark.parametrize(
    "doc, target", sorted({(d.relative_to(ROOT).as_posix(), t) for d in DOCS for t in _relative_links(d)})
)
def test_relative_links_resolve(doc, target):
    path, _, anchor = target.partition("#")
    file = (ROOT / doc).parent / path if path else ROOT / doc
    assert file.exists(), f"{doc} links to {target}, which is not in the repository"
    if anchor and file.suffix == ".md":
        assert anchor in _anchors(file.read_text()), f"{doc} links to {target}: no such heading in {path or doc}"


def test_link_check_finds_links_and_anchors():
    links = set(_relative_links(ROOT / "README.md"))
    assert "docs/benchmarks.md" in links and "docs/own_data.md" in links
    assert "the-package-name-centermask" in _anchors((ROOT / "centermask/README.md").read_text())


CONFIG_FILE_NAMES = {p.name for p in (ROOT / "configs").rglob("*.yaml")}
# YAML names the documentation uses that are not under configs/: the config that a run saves.
NOT_PROJECT_CONFIGS = {"config.yaml"}


@pytest.mark.parametrize("doc", [d.relative_to(ROOT).as_posix() for d in DOCS])
def test_documented_config_file_names_exist(doc):
    """Also the config files named without their folder (`R_18_shapes.yaml`)."""
    names = set(re.findall(r"(?<![*\w.-])[\w.-]+\.yaml\b", (ROOT / doc).read_text()))  # not globs: *_shapes.yaml
    missing = sorted(names - CONFIG_FILE_NAMES - NOT_PROJECT_CONFIGS)
    assert not missing, f"{doc} names config files that are not under configs/: {missing}"


def test_readme_is_a_short_guide():
    assert len(README.splitlines()) < 200, "README.md is the user's guide: measurements go to docs/"
    for command in ("make demo", "make test", "make test-fast", "python -m benchmark"):
        assert command in README, f"README.md does not mention {command!r}"


def _code_spans(text):
    """Fenced code lines (continuations joined) and inline code spans (line breaks as spaces)."""
    spans = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        spans += block.replace("\\\n", " ").splitlines()
    spans += [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", _without_fenced_code(text))]
    return spans


def _benchmark_subparsers():
    import argparse

    from benchmark.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("doc", [d.relative_to(ROOT).as_posix() for d in DOCS])
def test_documented_benchmark_commands_exist(doc):
    """`python -m benchmark SUB --flag ...`: SUB is a subcommand and each --flag one of its options."""
    from benchmark.cli import SUBCOMMANDS

    text = (ROOT / doc).read_text()
    unknown = sorted(set(re.findall(r"python -m benchmark ([\w-]+)", text)) - set(SUBCOMMANDS))
    assert not unknown, f"{doc} names benchmark subcommands that do not exist: {unknown}"
    subparsers = _benchmark_subparsers()
    for span in _code_spans(text):
        for sub, rest in re.findall(r"python -m benchmark ([\w-]+)([^;|&#]*)", span):
            flags = set(re.findall(r"(?<!\S)--[\w-]+", rest)) - {"--help"}
            unknown = sorted(flags - set(subparsers[sub]._option_string_actions))
            assert not unknown, f"{doc}: `python -m benchmark {sub}` has no options {unknown}"


def test_benchmark_command_check_sees_the_commands():
    spans = _code_spans((ROOT / "docs/benchmarks.md").read_text())
    assert any("python -m benchmark accuracy --models" in s for s in spans)
    assert "--accuracy-models" not in _benchmark_subparsers()["accuracy"]._option_string_actions


# A measurement in a comment: an AP value, a time, a memory size, a speed-up, or a sweep's "setting: value".
MEASUREMENT = re.compile(
    r"\bAP\w*\b[^\n]{0,30}?\d+\.\d"
    r"|\b\d+(?:\.\d+)?\s?(?:ms|s/it|s/iter|min|GFLOPs?|MB|GB)\b"
    r"|\b\d+(?:\.\d+)?x\s+(?:faster|slower)\b"
    r"|:\s*\d+\.\d+\b"
)


def _yaml_comments(path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = re.search(r"(?:^|\s)#(.*)", line)
        if match:
            yield number, match.group(1)


def test_measurement_pattern():
    for measured in ("mask AP 25.4", "val mask AP: 31.6", "12 ms", "1.86 s/it", "441 MB", "1.5x faster", "clip 0.5: 31.6"):
        assert MEASUREMENT.search(measured), measured
    for why in ("ImageNet VoVNet weights (vovnet39_ese_detectron2.pth) go in MODEL.WEIGHTS",
                "a 20 px shape spans 10 basis cells, not 5", "the runs: docs/notes/fcos_from_scratch.md"):
        assert not MEASUREMENT.search(why), why


@pytest.mark.parametrize("config", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml")))
def test_config_comments_carry_no_measurements(config):
    """Configs say why in a line; the numbers and sweeps behind it are in docs/notes/."""
    found = [(n, c.strip()) for n, c in _yaml_comments(ROOT / config) if MEASUREMENT.search(c)]
    assert not found, f"{config} has measurements in its comments (move them to docs/notes/): {found}"
