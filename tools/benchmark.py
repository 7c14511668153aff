#!/usr/bin/env python
"""Benchmarks of hila_d2's models, one sub-command each, printed as Markdown.

    python tools/benchmark.py speed          # encoders against reference implementations, 448x448
    python tools/benchmark.py hila-cost      # HILA's cost over the plain encoder, with targets
    python tools/benchmark.py hmsa-memory    # HMSA against explicit multi-scale training memory
    python tools/benchmark.py latency        # latency of the published HILA models and bases
    python tools/benchmark.py speed --help   # one sub-command's flags and defaults

Every sub-command takes the common flags ``--size H W``, ``--batch``, ``--device`` (cuda when
available), ``--threads``, ``--warmup`` and ``--repeats``, each with that sub-command's default,
then its own flags. The measurements live in the repository's ``benchmarks/`` (not installed
with hila_d2); docs/BENCHMARKS.md shows their tables.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

# the repository's benchmarks/ (not installed with hila_d2), from any working directory
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import hila_cost, hmsa_memory, latency, published, speed  # noqa: E402


def add_common_flags(
    parser: argparse.ArgumentParser,
    *,
    size: Optional[Tuple[int, int]],
    batch: int,
    warmup: int,
    repeats: int,
    threads: Optional[int] = None,
    size_help: str = "input size",
) -> None:
    """The flags every sub-command takes, with its defaults (``threads`` None: torch's)."""
    parser.add_argument("--size", type=int, nargs=2, default=size, metavar=("H", "W"),
                        help=f"{size_help} (default: {size_default_text(size)})")  # fmt: skip
    parser.add_argument("--batch", type=int, default=batch, help="images per step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=threads or torch.get_num_threads(),
        help="torch.set_num_threads",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=warmup, help="untimed steps of each model first"
    )
    parser.add_argument("--repeats", type=int, default=repeats, help="timed steps (median)")


def size_default_text(size: Optional[Tuple[int, int]]) -> str:
    return "the dataset's" if size is None else f"{size[0]} {size[1]}"


def check_common_flags(
    parser: argparse.ArgumentParser, args, *, min_warmup: int = 0, size_multiple: int = 1
) -> None:
    """argparse errors for common flags out of range or CUDA asked for where there is none."""
    if args.size and any(s <= 0 or s % size_multiple for s in args.size):
        kind = "positive" if size_multiple == 1 else f"positive multiples of {size_multiple}"
        parser.error(f"--size must be {kind}, got {args.size[0]} {args.size[1]}")
    if args.batch < 1 or args.repeats < 1 or args.threads < 1 or args.warmup < min_warmup:
        parser.error(f"--batch, --repeats and --threads must be >= 1, --warmup >= {min_warmup}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device}: CUDA is not available (torch.cuda.is_available() is "
            "False); use --device cpu"
        )


def add_speed(commands) -> None:
    parser = commands.add_parser("speed", help="encoders against reference implementations",
                                 description=speed.__doc__.split("\n\n")[0])  # fmt: skip
    add_common_flags(
        parser, size=(448, 448), batch=1, warmup=1, repeats=5,
        size_help="input size, multiples of 32 (448: every Swin-T stage grid is a multiple of "
        "its window 7, so timm's window order is the official one)",
    )  # fmt: skip
    for family, (title, _, variants, _) in speed.FAMILIES.items():
        parser.add_argument(
            f"--{family}",
            nargs="+",
            default=speed.DEFAULT_VARIANTS[family],
            choices=[*variants, "none"],
            help=f"{title} variants, or none",
        )
    parser.add_argument(
        "--opts", nargs="+", default=[], metavar="KEY VALUE",
        help="config overrides for every encoder, e.g. MODEL.HILA_D2_SWIN.WINDOW_SIZE 2",
    )  # fmt: skip
    parser.set_defaults(run=speed.run, check=check_speed)


def check_speed(parser: argparse.ArgumentParser, args) -> None:
    check_common_flags(parser, args, size_multiple=32)
    for family in speed.FAMILIES:
        setattr(args, family, [v for v in getattr(args, family) if v != "none"])


def add_hila_cost(commands) -> None:
    parser = commands.add_parser("hila-cost", help="HILA's cost over the plain encoder",
                                 description=hila_cost.__doc__.split("\n\n")[0])  # fmt: skip
    add_common_flags(parser, size=(512, 512), batch=1, warmup=2, repeats=7, threads=2)
    parser.add_argument(
        "--cases", nargs="+", choices=sorted(hila_cost.CASES),
        default=list(hila_cost.DEFAULT_CASES),
    )
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="also print HILA's N most costly ops over the plain encoder, per case (CPU)",
    )  # fmt: skip
    parser.set_defaults(run=hila_cost.run, check=check_common_flags)


def add_hmsa_memory(commands) -> None:
    parser = commands.add_parser("hmsa-memory", help="HMSA against explicit scale attention",
                                 description=hmsa_memory.__doc__.split("\n\n")[0])  # fmt: skip
    add_common_flags(parser, size=(256, 256), batch=2, warmup=1, repeats=3,
                     size_help="training crop")  # fmt: skip
    parser.add_argument(
        "--config-file", default=hmsa_memory.DEFAULT_CONFIG,
        help="an HMSA config (relative to the working directory or the repository)",
    )  # fmt: skip
    parser.add_argument(
        "--explicit-scales", type=float, nargs="+", default=(0.5, 1.0, 2.0),
        help="scales of the explicit baseline",
    )  # fmt: skip
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides, KEY VALUE pairs"
    )
    parser.set_defaults(run=hmsa_memory.run, check=check_hmsa_memory)


def check_hmsa_memory(parser: argparse.ArgumentParser, args) -> None:
    # the warm-up step also allocates the SGD momentum, which the peak must not include
    check_common_flags(parser, args, min_warmup=1)


def add_latency(commands) -> None:
    parser = commands.add_parser("latency", help="latency of the published HILA models",
                                 description=latency.__doc__.split("\n\n")[0])  # fmt: skip
    add_common_flags(
        parser, size=None, batch=1, warmup=1, repeats=5,
        size_help="input size, multiples of 32 (ADE 512 512, city 1024 2048)",
    )  # fmt: skip
    published.add_selection_arguments(parser)
    parser.set_defaults(run=latency.run, check=check_latency)


def check_latency(parser: argparse.ArgumentParser, args) -> None:
    check_common_flags(parser, args, size_multiple=32)
    published.check_selection(parser, args)


SUB_COMMANDS = {
    "speed": add_speed,
    "hila-cost": add_hila_cost,
    "hmsa-memory": add_hmsa_memory,
    "latency": add_latency,
}


def build_parser() -> Tuple[argparse.ArgumentParser, dict]:
    """The parser and its sub-command parsers by name."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUB_COMMANDS.values():
        add(commands)
    return parser, commands.choices


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser, sub_parsers = build_parser()
    args = parser.parse_args(argv)
    args.check(sub_parsers[args.command], args)
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.run(args)


if __name__ == "__main__":
    main()
