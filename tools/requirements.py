"""requirements.txt without some packages: the install with INSTSEG_SYSTEM_TORCH=1 keeps the torch and
torchvision that the machine already has (make install; docs/install.md).

    python tools/requirements.py requirements.txt --without torch torchvision > filtered.txt

Comments, blank lines and every other requirement are kept as they are; a dropped line becomes a
comment that says so, so that the filtered file still reads like the original.
"""
import argparse
import re
import sys

SYSTEM_TORCH = ("torch", "torchvision")


def canonical(name: str) -> str:
    """PEP 503's normalised name: Torch_Vision and torch-vision are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str):
    """The distribution a requirements line names (None for a comment, a blank or an option line)."""
    text = line.split("#", 1)[0].strip()
    if not text or text.startswith("-"):
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
    return canonical(match.group(0)) if match else None


def without(lines, names):
    """`lines` of a requirements file, those that name one of `names` turned into comments."""
    drop = {canonical(n) for n in names}
    return [f"# kept as installed: {line.strip()}" if requirement_name(line) in drop else line.rstrip("\n")
            for line in lines]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requirements")
    parser.add_argument("--without", nargs="*", default=list(SYSTEM_TORCH), help="distributions to leave out")
    args = parser.parse_args(argv)
    with open(args.requirements) as f:
        sys.stdout.write("\n".join(without(f, args.without)) + "\n")


if __name__ == "__main__":
    main()
