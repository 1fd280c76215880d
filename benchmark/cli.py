"""`python -m benchmark SUBCOMMAND [options]`: one command line for the project's benchmarks;
`python -m benchmark SUBCOMMAND --help` describes each."""
import argparse

from . import accuracy, blender, export, parts, roi_align, speed

# subcommand -> (the module with its add_arguments(parser) and main(args), a line of help)
_COMMANDS = {
    "speed": (speed, "the methods' latency, memory, FLOPs, training step and parts, against Mask R-CNN"),
    "parts": (parts, "where one inference's time goes, by model part"),
    "accuracy": (accuracy, "train the *_shapes configs; the speed-vs-accuracy table and plot"),
    "roi-align": (roi_align, "our RoIAlign op against torchvision's"),
    "blender": (blender, "the fused blender op against the plain PyTorch one"),
    "export": (export, "ONNX Runtime against eager PyTorch on CPU, and the ONNX files' sizes"),
}
SUBCOMMANDS = tuple(_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, (module, help) in _COMMANDS.items():
        sub = subcommands.add_parser(name, help=help, description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.main)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)
