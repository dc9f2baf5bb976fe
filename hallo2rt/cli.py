"""The ``hallo2rt`` console script: a thin parser over library functions (STYLE.md §12).

Each subcommand imports only what it needs. Subcommands whose issue has not landed say so and
exit with status 2 rather than pretending to work.
"""

from __future__ import annotations

import argparse
import logging
import sys

SUBCOMMANDS = {
    "export": "export every engine's graph to ONNX from a checkpoint tree",
    "build": "build TensorRT / ONNX Runtime engines from exported ONNX",
    "generate": "animate a portrait from driving audio into an MP4",
    "bench": "measure frames per second and per-stage latency",
    "demo": "run a small end-to-end demo on random weights",
    "doctor": "report what this machine can run (GPU, CUDA, TensorRT, ONNX Runtime)",
}
NOT_BUILT_EXIT = 2


def _not_built(name: str) -> int:
    print(
        f"hallo2rt {name}: not built yet. This subcommand belongs to a later milestone; "
        "today hallo2rt provides checkpoint loading and the PyTorch modules "
        "(hallo2rt.export.load_pretrained).",
        file=sys.stderr,
    )
    return NOT_BUILT_EXIT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hallo2rt",
        description="Deploy Hallo2 portrait animation fast.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return _not_built(args.command)


if __name__ == "__main__":
    sys.exit(main())
