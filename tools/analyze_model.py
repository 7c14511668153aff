#!/usr/bin/env python
"""Parameters, fvcore FLOPs, activations and structure of the model of any hila_d2 config (a
YAML config or a LazyConfig .py), after detectron2's tools/analyze_model.py; or, with
``--published``, our params and fvcore GFLOPs of the HILA models beside the published numbers.

    python tools/analyze_model.py --tasks parameter flop \\
        --config-file configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml
    python tools/analyze_model.py --tasks flop --size 512 512 \\
        --config-file configs/ade20k/semantic-segmentation/hila/hila_mit_b0_s3_160k.yaml
    python tools/analyze_model.py --published --models mit --dataset ade

FLOPs and activations depend on the input, so they are counted on ``-n/--num-inputs`` inputs
(mean ± std): images of the config's first test dataset through detectron2's test loader, or,
with ``--size H W``, random images of that size (no dataset needed). The weights of
``MODEL.WEIGHTS`` (``train.init_checkpoint``) are loaded when set: a segmentor's FLOPs do not
depend on them, a detector's do. Trailing ``KEY VALUE`` pairs (``key=value`` for a LazyConfig)
override the config; the model runs on CPU unless they set ``MODEL.DEVICE`` (``train.device``).
Every table is Markdown; FLOPs use fvcore's counts as detectron2 sets them up, plus a handle for
``aten::scaled_dot_product_attention`` (the multiply-adds of Q·Kᵀ and A·V).
"""
import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis, activation_count_operators
from fvcore.nn import parameter_count
from torch import nn

from hila_d2.checkpoint.loading import ValidatingCheckpointer

# the repository's benchmarks/ (not installed with hila_d2), from any working directory
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import published  # noqa: E402
from benchmarks.configs import benchmark_config, project_file  # noqa: E402
from benchmarks.profiling import markdown_table, sdpa_flop_jit  # noqa: E402

TASKS = ("parameter", "flop", "activation", "structure")
PUBLISHED_TASKS = ("parameter", "flop")


def setup(args):
    """The config of ``args.config_file`` with ``args.opts``: a frozen CfgNode (on CPU, no data
    workers, SyncBN as BN) or a LazyConfig."""
    if args.config_file.endswith(".py"):
        cfg = LazyConfig.load(project_file(args.config_file))
        cfg.train.device = "cpu"
        cfg.dataloader.test.num_workers = 0
        return LazyConfig.apply_overrides(cfg, args.opts)
    defaults = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
    return benchmark_config(args.config_file, [*defaults, *args.opts])


def build(cfg, load_weights: bool) -> nn.Module:
    """The config's model in eval mode, with its configured weights if ``load_weights``."""
    if isinstance(cfg, CfgNode):
        model, weights = build_model(cfg), cfg.MODEL.WEIGHTS
    else:
        model = instantiate(cfg.model).to(cfg.train.device)
        weights = cfg.train.init_checkpoint
    if load_weights:
        ValidatingCheckpointer(model).load(weights)
    return model.eval()


def inputs(cfg, model: nn.Module, args) -> Iterable[List[Dict[str, torch.Tensor]]]:
    """``args.num_inputs`` batches of one image each: random (3, H, W) images in [0, 255] at
    ``args.size``, or the test loader's images."""
    if args.size:
        generator = torch.Generator().manual_seed(0)
        for _ in range(args.num_inputs):
            image = torch.rand(3, *args.size, generator=generator) * 255
            yield [{"image": image.to(model.device)}]
        return
    if isinstance(cfg, CfgNode):
        loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    else:
        loader = instantiate(cfg.dataloader.test)
    for _, batch in zip(range(args.num_inputs), loader):
        yield batch


def within_depth(name: str, max_depth: int) -> bool:
    """Whether module ``name`` ("" is the model) lies at most ``max_depth`` levels down."""
    return name == "" or name.count(".") < max_depth


def parameter_table(model: nn.Module, max_depth: int) -> str:
    """Parameters per module down to ``max_depth`` levels, the model's total first."""
    counts = parameter_count(model)
    rows = [[name or "model", f"{count:,}"] for name, count in counts.items()
            if within_depth(name, max_depth)]  # fmt: skip
    return markdown_table(["module", "parameters"], rows)


def flop_analysis(model: nn.Module, batch, quiet: bool) -> FlopCountAnalysis:
    """detectron2's FlopCountAnalysis of ``model(batch)`` with the attention handle."""
    analysis = FlopCountAnalysis(model, batch).set_op_handle(
        "aten::scaled_dot_product_attention", sdpa_flop_jit
    )
    if quiet:
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.tracer_warnings("none")


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` of ``values``, whole numbers with thousands separators."""
    return f"{np.mean(values):,.0f} ± {np.std(values):,.0f}"


def do_flop(cfg, args) -> None:
    model = build(cfg, load_weights=True)
    by_operator: Counter = Counter()
    totals, skipped = [], Counter()
    analysis = None
    with torch.no_grad():
        for index, batch in enumerate(inputs(cfg, model, args)):
            analysis = flop_analysis(model, batch, quiet=index > 0)
            by_operator += analysis.by_operator()
            totals.append(analysis.total())
            skipped += analysis.unsupported_ops()
    if analysis is None:
        raise ValueError("no input to count FLOPs on: the test loader is empty; pass --size H W")
    runs = len(totals)
    # the analysis traces detectron2's TracingAdapter, whose submodule "model" is the model
    by_module = {name[len("model.") :]: flops for name, flops in analysis.by_module().items()
                 if name.startswith("model.")}  # fmt: skip
    module_rows = [["model", f"{analysis.total() / 1e9:.4f}"]] + [
        [name, f"{flops / 1e9:.4f}"] for name, flops in by_module.items()
        if within_depth(name, args.max_depth) and flops
    ]  # fmt: skip
    operator_rows = [[op, f"{flops / runs / 1e9:.4f}"] for op, flops in by_operator.most_common()]
    print("### FLOPs\n")
    print(f"Total FLOPs over {runs} input(s): {mean_std(totals)}\n")
    print("GFLOPs per module, first input:\n")
    print(markdown_table(["module", "GFLOPs"], module_rows) + "\n")
    print(f"GFLOPs per operator, mean over {runs} input(s):\n")
    print(markdown_table(["operator", "GFLOPs"], operator_rows) + "\n")
    ops = ", ".join(f"`{op}` ×{n}" for op, n in sorted(skipped.items())) or "none"
    print(f"Ops fvcore skipped (not counted): {ops}\n")


def do_activation(cfg, args) -> None:
    model = build(cfg, load_weights=True)
    counts: Counter = Counter()
    totals = []
    with torch.no_grad():
        for batch in inputs(cfg, model, args):
            count = activation_count_operators(model, batch)
            counts += count
            totals.append(sum(count.values()))
    if not totals:
        raise ValueError("no input to count activations on: the test loader is empty; pass --size")
    rows = [[op, f"{value / len(totals):.4f}"] for op, value in counts.most_common()]
    print("### Activations\n")
    total = f"{np.mean(totals):.4f} ± {np.std(totals):.4f}"
    print(f"Total (million) activations over {len(totals)} input(s): {total}\n")
    print(markdown_table(["operator", "activations (M)"], rows) + "\n")


def do_parameter(cfg, args) -> None:
    print("### Parameters\n")
    print(parameter_table(build(cfg, load_weights=False), args.max_depth) + "\n")


def do_structure(cfg, args) -> None:
    print("### Structure\n")
    print(f"```\n{build(cfg, load_weights=False)}\n```\n")


RUNNERS = {
    "parameter": do_parameter,
    "flop": do_flop,
    "activation": do_activation,
    "structure": do_structure,
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )  # fmt: skip
    parser.add_argument("--config-file", metavar="FILE", help="a YAML config or a LazyConfig .py")
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS,
        help=f"what to analyse (--published: {', '.join(PUBLISHED_TASKS)}, the default)",
    )  # fmt: skip
    parser.add_argument(
        "-n", "--num-inputs", type=int, default=1,
        help="inputs to count FLOPs and activations on (they depend on the input size)",
    )  # fmt: skip
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"),
        help="random images of this size instead of the test dataset's "
        "(--published: default ADE 512 512, city 1024 2048)",
    )  # fmt: skip
    parser.add_argument("--max-depth", type=int, default=3, help="module levels in the tables")
    parser.add_argument("--published", action="store_true",
                        help="our params and GFLOPs of the HILA models beside the published ones")
    published.add_selection_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides: KEY VALUE pairs (key=value for a LazyConfig)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """argparse errors for flags that contradict each other or are out of range."""
    if args.published:
        if args.config_file or args.opts:
            parser.error("--published analyses the models of its own table; drop --config-file "
                         "and the KEY VALUE overrides, or drop --published")  # fmt: skip
        args.tasks = args.tasks or list(PUBLISHED_TASKS)
        if not set(args.tasks) <= set(PUBLISHED_TASKS):
            parser.error(f"--published counts {' and '.join(PUBLISHED_TASKS)} only, got "
                         f"--tasks {' '.join(args.tasks)}")  # fmt: skip
        published.check_selection(parser, args)
        return
    if args.only or args.models != "all" or args.dataset != "ade":
        parser.error("--models, --dataset and --only choose the models of --published; add it")
    if not args.config_file or not args.tasks:
        parser.error("give --config-file FILE and --tasks (or --published)")
    if args.num_inputs < 1 or args.max_depth < 0:
        parser.error("-n/--num-inputs must be >= 1 and --max-depth >= 0")
    if args.size and min(args.size) <= 0:
        parser.error(f"--size must be positive, got {args.size[0]} {args.size[1]}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.published:
        published.print_published_tables(args, count_flops="flop" in args.tasks)
        return
    cfg = setup(args)
    for task in args.tasks:
        RUNNERS[task](cfg, args)


if __name__ == "__main__":
    main()
