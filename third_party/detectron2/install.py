"""Install detectron2 into the running Python environment, unless a detectron2 is already there.

detectron2's authors publish no wheels, and its git source cannot be reached from every machine. PyPI does
carry ``pb1-detectron2==0.6``: an sdist of detectron2 v0.6's Python code without ``layers/csrc``, whose
``setup.py`` cannot build as it is. Like a distribution packager, we build a pure-Python wheel of it with
``pb1-detectron2-0.6.patch`` (next to this file) applied; the patch's hunks say what each change is for.

- An importable detectron2 that is not our build (e.g. one installed from git with its compiled ops) is
  left alone.
- Our build carries the local version ``+instseg.<PATCH_REVISION>``; bump PATCH_REVISION when the patch
  changes so that existing environments pick up the new build.

Usage: python third_party/detectron2/install.py   (pip must be able to reach PyPI or a mirror of it)
       python third_party/detectron2/install.py --wheelhouse DIR [--wheel-only]
With --wheelhouse our wheel is installed from DIR when it is there (no index needed: a machine without
the registries), else built as above and a copy left in DIR; --wheel-only just makes sure it is in DIR
(`make wheelhouse`).
"""
import argparse
import glob
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
PATCH_REVISION = "2"
LOCAL_VERSION = "0.6+instseg." + PATCH_REVISION
PATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pb1-detectron2-0.6.patch")


def _installed_pb1_version():
    try:
        return importlib.metadata.version("pb1-detectron2")
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip(*args):
    subprocess.check_call([sys.executable, "-m", "pip", *args])


def wheel_in(wheelhouse):
    """Our build's wheel in `wheelhouse`, or None."""
    found = sorted(glob.glob(os.path.join(wheelhouse, f"pb1_detectron2-{LOCAL_VERSION}-*.whl")))
    return found[-1] if found else None


def build_wheel(workdir):
    requirement = os.path.join(workdir, "requirement.txt")
    with open(requirement, "w") as f:
        f.write(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
    # --no-build-isolation: the unpatched setup.py imports torch to read metadata
    _pip("download", "-q", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
         "--require-hashes", "-r", requirement, "-d", workdir)
    with tarfile.open(os.path.join(workdir, "pb1-detectron2-0.6.tar.gz")) as tar:
        tar.extractall(workdir, filter="data")
    source = os.path.join(workdir, "pb1-detectron2-0.6")
    subprocess.check_call(["git", "apply", "-p1", PATCH], cwd=source)
    env = dict(os.environ, D2_VERSION_SUFFIX="+instseg." + PATCH_REVISION)
    subprocess.check_call(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", workdir, source],
        env=env,
    )
    return os.path.join(workdir, next(f for f in os.listdir(workdir) if f.endswith(".whl")))


def wheel_into(wheelhouse):
    """Our wheel in `wheelhouse`: the one there, or a new build copied there."""
    wheel = wheel_in(wheelhouse)
    if wheel is None:
        os.makedirs(wheelhouse, exist_ok=True)
        with tempfile.TemporaryDirectory() as workdir:
            wheel = shutil.copy(build_wheel(workdir), wheelhouse)
    return wheel


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheelhouse", help="a folder to install our wheel from, or to leave a copy of it in")
    parser.add_argument("--wheel-only", action="store_true", help="only make sure the wheel is in --wheelhouse")
    args = parser.parse_args(argv)
    if args.wheel_only:
        if not args.wheelhouse:
            parser.error("--wheel-only needs --wheelhouse")
        print(f"detectron2: {wheel_into(args.wheelhouse)}")
        return
    pb1_version = _installed_pb1_version()
    if pb1_version == LOCAL_VERSION:
        print(f"detectron2: our build {pb1_version} is installed")
        return
    if pb1_version is None and importlib.util.find_spec("detectron2") is not None:
        print("detectron2: an existing installation was found and is left alone")
        return
    if args.wheelhouse:
        _pip("install", "-q", "--find-links", args.wheelhouse, wheel_into(args.wheelhouse))
        return
    print(f"detectron2: building a pure-Python wheel of {SDIST} with our compatibility patch")
    with tempfile.TemporaryDirectory() as workdir:
        _pip("install", "-q", build_wheel(workdir))


if __name__ == "__main__":
    main()
