#!/usr/bin/env python
"""Train configs over seeds on one dataset and print one Markdown table ("does HILA help here?").

    python tools/ablate.py --output-dir output/ablation/b0 --seeds 1 2 3 \\
        --variant plain configs/builtin/semantic-segmentation/segformer_mit_b0.yaml \\
        --variant hila-s3 configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml \\
        --variant hila-s23 configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml \\
            MODEL.HILA.STAGES=[2,3]
    python tools/ablate.py ... --schedule-scale 4 -- SOLVER.IMS_PER_BATCH 16   # opts of every run
    python tools/ablate.py ... --table-only     # the table of the runs finished so far

Each (variant, seed) run is ``train_net.py --num-gpus 1`` in ``<output-dir>/<variant>/seed<k>``
with the variant's config file, then the ``KEY VALUE`` options after ``--``, then the variant's
``KEY=VALUE`` overrides, then SOLVER.MAX_ITER, STEPS, WARMUP_ITERS, HILA_WARMUP_ITERS and
CHECKPOINT_PERIOD times ``--schedule-scale``, then ``SEED k`` and
``TEST.BOUNDARY_FSCORE.ENABLED True``. The run directory gets ``ablation_run.json``: the two
final scores of the config's one test dataset (by its ``evaluator_type``: mIoU and boundary
F-score (mBF) for ``sem_seg``; mask and box AP for ``coco`` with masks, box AP and AP50
without), the wall time of its train_net.py processes, the parameters of the built model, the
iterations, the config file, options and resolved config, and whether it finished.

Rerunning the same command skips the finished runs, resumes an interrupted one from its last
checkpoint (``train_net.py --resume``) and refuses a run directory whose recorded config (the
JSON file's, else the ``config.yaml`` train_net.py wrote) differs from the requested one.
Progress (run i of n, its iterations, an ETA from the finished runs) goes to stderr, the table
to stdout. A difference of means "exceeds the spread" when it is larger than the larger of the
two variants' sample standard deviations over seeds: a screen, not a significance test (with
3 seeds a t-test has too little power to be worth its assumptions).
"""
import argparse
import collections
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY

import hila_d2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository's benchmarks/ (not installed with hila_d2)
from benchmarks.profiling import markdown_table  # noqa: E402

RECORD_FILE = "ablation_run.json"
# The two scores compared, by the test dataset's evaluator_type: (name in records and tables,
# key in train_net.py's metrics.json)
Score = Tuple[str, str]
SEM_SEG_SCORES: Tuple[Score, Score] = (("mIoU", "sem_seg/mIoU"), ("mBF", "boundary_fscore/mBF"))
MASK_SCORES: Tuple[Score, Score] = (("mask AP", "segm/AP"), ("box AP", "bbox/AP"))
BOX_SCORES: Tuple[Score, Score] = (("box AP", "bbox/AP"), ("box AP50", "bbox/AP50"))
# of cfg.SOLVER
SCHEDULE_KEYS = ("MAX_ITER", "STEPS", "WARMUP_ITERS", "HILA_WARMUP_ITERS", "CHECKPOINT_PERIOD")
TOOL_KEYS = ("SEED", "OUTPUT_DIR", "TEST.BOUNDARY_FSCORE.ENABLED")  # set per run by this tool
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
ITERATION_LINE = re.compile(r"(?:eta: (\S+)\s+)?iter: (\d+)")  # detectron2's metric printer
START_LINE = re.compile(r"Starting training from iteration (\d+)")  # detectron2's trainer


def report(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (the way records name config files)."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def check_opts(opts: Sequence[str], origin: str) -> None:
    """ValueError unless ``opts`` are ``KEY VALUE`` pairs leaving this tool's keys alone."""
    if len(opts) % 2:
        raise ValueError(f"{origin} must be KEY VALUE pairs, got an odd count: {list(opts)}")
    for key in opts[0::2]:
        if key in TOOL_KEYS:
            raise ValueError(
                f"{origin} set {key}, which ablate.py sets for each run (SEED from --seeds, "
                "OUTPUT_DIR from --output-dir, the boundary F-score always on); drop it"
            )


@dataclass(frozen=True)
class Variant:
    """A named config: ``config_file`` and the ``KEY VALUE`` pairs ``overrides`` over it."""

    name: str
    config_file: Path
    overrides: Tuple[str, ...]

    @classmethod
    def parse(cls, words: Sequence[str]) -> "Variant":
        """From ``NAME CONFIG [KEY=VALUE ...]`` (``--variant``'s words)."""
        if len(words) < 2:
            raise ValueError(f"--variant takes NAME CONFIG [KEY=VALUE ...], got {list(words)}")
        name, config, *assignments = words
        if not VARIANT_NAME.fullmatch(name):
            raise ValueError(
                f"Variant name {name!r} names its output directory: use letters, digits and "
                "'_.+-', starting with a letter or digit"
            )
        config_file = Path(config).resolve()
        if not config_file.is_file():
            raise ValueError(f"Config file {config!r} of variant {name!r} does not exist")
        overrides: List[str] = []
        for assignment in assignments:
            key, equals, value = assignment.partition("=")
            if not equals or not key:
                raise ValueError(
                    f"Override {assignment!r} of variant {name!r} is not KEY=VALUE "
                    "(e.g. MODEL.HILA.STAGES=[2,3])"
                )
            overrides += [key, value]
        check_opts(overrides, f"The overrides of variant {name!r}")
        return cls(name, config_file, tuple(overrides))


def scaled_schedule(cfg: CfgNode, scale: float) -> List[str]:
    """``KEY VALUE`` pairs multiplying cfg.SOLVER's MAX_ITER, STEPS, WARMUP_ITERS, HILA_WARMUP_ITERS and
    CHECKPOINT_PERIOD by ``scale`` (none when it is 1)."""
    if scale <= 0:
        raise ValueError(f"--schedule-scale must be > 0, got {scale}")
    if scale == 1:
        return []
    opts: List[str] = []
    for key in SCHEDULE_KEYS:
        value = cfg.SOLVER[key]
        if isinstance(value, (list, tuple)):
            scaled = str(tuple(round(step * scale) for step in value))
        else:
            scaled = str(max(1, round(value * scale)) if value > 0 else value)
        opts += [f"SOLVER.{key}", scaled]
    return opts


def flat_config(config: dict, prefix: str = "") -> Dict[str, object]:
    """A nested config dict as ``{"A.B.C": value}``."""
    flat: Dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class Run:
    """One (variant, seed) training: train_net.py's ``opts`` (OUTPUT_DIR aside) and the config
    they resolve to."""

    variant: Variant
    seed: int
    output_dir: Path
    opts: List[str]
    cfg: CfgNode
    scores: Tuple[Score, Score]

    @property
    def name(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"

    @property
    def record_path(self) -> Path:
        return self.output_dir / RECORD_FILE

    def resolved_config(self) -> dict:
        """The config as train_net.py dumps it to ``config.yaml``, loaded, without OUTPUT_DIR."""
        config = yaml.safe_load(self.cfg.dump())
        del config["OUTPUT_DIR"]
        return config

    def new_record(self) -> dict:
        return {
            "variant": self.variant.name,
            "seed": self.seed,
            "config_file": repo_relative(self.variant.config_file),
            "opts": self.opts,
            "config": self.resolved_config(),
            "dataset": self.cfg.DATASETS.TEST[0],
            "iterations": self.cfg.SOLVER.MAX_ITER,
            "finished": False,
            "train_seconds": 0.0,
            **{name: None for name, _ in self.scores},
            "params": None,
        }

    def load_record(self) -> Optional[dict]:
        if not self.record_path.exists():
            return None
        return json.loads(self.record_path.read_text())

    def write_record(self, record: dict) -> None:
        """Written whole or not at all (a new file renamed over the old)."""
        partial = self.record_path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(partial, self.record_path)

    def check_recorded_config(self, record: Optional[dict]) -> None:
        """ValueError when the run directory holds a run of another config: the record's config
        file, or a key that both the recorded config (the record's, else train_net.py's
        ``config.yaml``) and the requested one have, with another value (a key only one of them
        has, added or removed since by a code change, is not compared)."""
        differences = []
        if record is not None:
            recorded = record["config"]
            requested_file = repo_relative(self.variant.config_file)
            if record["config_file"] != requested_file:
                differences.append(
                    f"config file: recorded {record['config_file']}, requested {requested_file}"
                )
        elif (self.output_dir / "config.yaml").exists():
            recorded = yaml.safe_load((self.output_dir / "config.yaml").read_text())
        else:
            return
        recorded_flat, requested_flat = flat_config(recorded), flat_config(self.resolved_config())
        for key in sorted(recorded_flat.keys() & requested_flat.keys()):
            if recorded_flat[key] != requested_flat[key]:
                differences.append(
                    f"{key}: recorded {recorded_flat[key]!r}, requested {requested_flat[key]!r}"
                )
        if differences:
            raise ValueError(
                f"{self.output_dir} holds a run of {self.name} with another config than the "
                f"requested one ({'; '.join(differences)}). Pass another --output-dir, or delete "
                "that directory to train it anew."
            )


def plan_runs(
    variants: Sequence[Variant],
    seeds: Sequence[int],
    opts: Sequence[str],
    schedule_scale: float,
    output_dir: Path,
) -> List[Run]:
    """Every (variant, seed) run, its config resolved and validated (so that a bad key fails
    before anything trains); all variants must test on the same one dataset."""
    check_opts(opts, "The options after --")
    if not seeds:
        raise ValueError("--seeds names no seed: pass at least one, e.g. --seeds 1 2 3")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {list(seeds)}")
    names = [variant.name for variant in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"Variant names must be unique (they name directories), got {names}")
    runs: List[Run] = []
    for variant in variants:
        config_file = str(variant.config_file)
        variant_opts = [*opts, *variant.overrides]
        unscaled = hila_d2.load_config(config_file, variant_opts)
        variant_opts += scaled_schedule(unscaled, schedule_scale)
        scores = scores_of(unscaled)
        for seed in seeds:
            run_opts = [*variant_opts, "SEED", str(seed), "TEST.BOUNDARY_FSCORE.ENABLED", "True"]
            run_dir = output_dir / variant.name / f"seed{seed}"
            cfg = hila_d2.load_config(config_file, [*run_opts, "OUTPUT_DIR", str(run_dir)])
            runs.append(Run(variant, seed, run_dir, run_opts, cfg, scores))
        hila_d2.validate_config(runs[-1].cfg)  # the seeds' configs differ in no model key
    datasets = {run.cfg.DATASETS.TEST for run in runs}
    if len(datasets) != 1 or len(next(iter(datasets))) != 1:
        raise ValueError(
            "The variants must test on the same one dataset, got DATASETS.TEST "
            f"{sorted(datasets)}; pass e.g. DATASETS.TEST \"('hila_shapes_val_sem_seg',)\" after --"
        )
    if len({run.scores for run in runs}) != 1:
        raise ValueError(
            "The variants must be scored alike: some detectors have masks (MODEL.MASK_ON), some "
            "not; compare them by box AP with MODEL.MASK_ON False after --"
        )
    return runs


def scores_of(cfg: CfgNode) -> Tuple[Score, Score]:
    """The two scores of ``cfg``'s first test dataset, by its ``evaluator_type``: ``sem_seg``
    and ``coco`` for the datasets the config defines itself (DATASETS.SEM_SEG_FOLDERS /
    COCO_JSONS: no data is read), the registered metadata's for the others."""
    dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    defined = {split[0]: "sem_seg" for split in cfg.DATASETS.SEM_SEG_FOLDERS.SPLITS}
    defined.update({split[0]: "coco" for split in cfg.DATASETS.COCO_JSONS.SPLITS})
    if dataset in defined:
        evaluator = defined[dataset]
    else:
        evaluator = MetadataCatalog.get(dataset).get("evaluator_type", None) if dataset else None
    if evaluator == "sem_seg":
        return SEM_SEG_SCORES
    if evaluator == "coco":
        return MASK_SCORES if cfg.MODEL.MASK_ON else BOX_SCORES
    raise ValueError(
        f"ablate.py scores a test dataset whose evaluator_type is 'sem_seg' or 'coco'; "
        f"DATASETS.TEST {tuple(cfg.DATASETS.TEST)} starts with one of evaluator_type "
        f"{evaluator!r}: pass another after --, e.g. DATASETS.TEST \"('hila_shapes_val',)\""
    )


def final_scores(output_dir: Path, scores: Sequence[Score]) -> Dict[str, float]:
    """``{name: value}`` of ``scores`` at the last evaluation in ``output_dir``'s metrics.json."""
    metrics = {}
    path = output_dir / "metrics.json"
    keys = [key for _, key in scores]
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        metrics.update({key: record[key] for key in keys if key in record})
    missing = [key for key in keys if key not in metrics]
    if missing:
        raise RuntimeError(
            f"{path} has no {missing}: the run did not evaluate its test dataset (see "
            "train_net.py's build_evaluator and its log.txt)"
        )
    return {name: metrics[key] for name, key in scores}


def parameter_count(cfg: CfgNode) -> int:
    """Parameters of the model ``cfg`` builds (built on the meta device: no memory, no RNG)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return sum(p.numel() for p in model.parameters())


def launch_train_net(run: Run, resume: bool, progress: Callable[[str], None]) -> None:
    """Train ``run`` with train_net.py (``--resume`` from its last checkpoint if ``resume``),
    passing its iteration lines to ``progress``; RuntimeError with the output's end if it fails."""
    command = [
        sys.executable, str(REPO / "train_net.py"), "--num-gpus", "1",
        "--config-file", str(run.variant.config_file), *(["--resume"] if resume else []),
        *run.opts, "OUTPUT_DIR", str(run.output_dir),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    last_lines: collections.deque = collections.deque(maxlen=40)
    with subprocess.Popen(
        command, cwd=REPO, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as process:  # fmt: skip
        try:
            for line in process.stdout:
                last_lines.append(line)
                start = START_LINE.search(line)
                if start:
                    progress(f"starting at iteration {start.group(1)}")
                match = ITERATION_LINE.search(line)
                if match:
                    eta = f", eta {match.group(1)}" if match.group(1) else ""
                    progress(f"iteration {int(match.group(2)) + 1}/{run.cfg.SOLVER.MAX_ITER}{eta}")
        finally:
            if process.poll() is None:  # this tool was interrupted
                process.terminate()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(
            f"train_net.py exited with {process.returncode} training {run.name}; its output "
            f"ended with:\n{''.join(last_lines)}\nFull log: {run.output_dir / 'log.txt'}. "
            "Rerunning the same command resumes it."
        )


def train_all(runs: Sequence[Run]) -> None:
    """Train every run not finished yet, resuming those with a checkpoint."""
    pending = []
    finished_seconds = []
    for run in runs:
        record = run.load_record()
        run.check_recorded_config(record)
        if record is not None and record["finished"]:
            finished_seconds.append(record["train_seconds"])
        else:
            pending.append((run, record))
    done = len(runs) - len(pending)
    eta = f", ETA {duration(statistics.mean(finished_seconds) * len(pending))}" if done else ""
    report(f"{done} of {len(runs)} runs finished already, {len(pending)} to train{eta}")
    parameters: Dict[str, int] = {}
    for index, (run, record) in enumerate(pending, 1):
        prefix = f"[{index}/{len(pending)}] {run.name}"
        checkpoint = run.output_dir / "last_checkpoint"
        resume = checkpoint.exists()
        start = f"resuming from {checkpoint.read_text().strip()}" if resume else "training"
        report(f"{prefix}: {start} ({run.cfg.SOLVER.MAX_ITER} iterations) in {run.output_dir}")
        run.output_dir.mkdir(parents=True, exist_ok=True)
        record = record or run.new_record()
        run.write_record(record)
        started = time.monotonic()
        try:
            launch_train_net(run, resume, lambda message: report(f"{prefix}: {message}"))
        finally:  # the time of an interrupted attempt counts too
            record["train_seconds"] += time.monotonic() - started
            run.write_record(record)
        if run.variant.name not in parameters:
            parameters[run.variant.name] = parameter_count(run.cfg)
        values = final_scores(run.output_dir, run.scores)
        record.update(finished=True, **values, params=parameters[run.variant.name])
        run.write_record(record)
        finished_seconds.append(record["train_seconds"])
        remaining = len(pending) - index
        eta = duration(statistics.mean(finished_seconds) * remaining)
        report(
            f"{prefix}: finished in {duration(record['train_seconds'])}, "
            + ", ".join(f"{name} {value:.2f}" for name, value in values.items())
            + f"; {remaining} runs left, ETA {eta}"
        )


@dataclass
class VariantResults:
    """The finished seeds of one variant: its two scores and train_net.py seconds per seed."""

    name: str
    seeds_requested: int
    first: List[float]
    second: List[float]
    seconds: List[float]
    params: Optional[int]


def collect_results(runs: Sequence[Run]) -> List[VariantResults]:
    """The finished runs' records, by variant (in the order given), checked against the
    requested configs."""
    results: Dict[str, VariantResults] = {}
    for run in runs:
        entry = results.setdefault(
            run.variant.name, VariantResults(run.variant.name, 0, [], [], [], None)
        )
        entry.seeds_requested += 1
        record = run.load_record()
        run.check_recorded_config(record)
        if record is not None and record["finished"]:
            entry.first.append(record[run.scores[0][0]])
            entry.second.append(record[run.scores[1][0]])
            entry.seconds.append(record["train_seconds"])
            entry.params = record["params"]
    return list(results.values())


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (None below 1 and 2 values)."""
    mean = statistics.mean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def compare(
    values: Sequence[float], baseline: Sequence[float]
) -> Tuple[Optional[float], Optional[bool]]:
    """Difference of means vs ``baseline`` and whether its size exceeds the larger sample std
    of the two (None where too few values)."""
    (mean, std), (base_mean, base_std) = mean_std(values), mean_std(baseline)
    if mean is None or base_mean is None:
        return None, None
    difference = mean - base_mean
    if std is None or base_std is None:
        return difference, None
    return difference, abs(difference) > max(std, base_std)


def ablation_table(
    results: Sequence[VariantResults], baseline: str, scores: Sequence[Score]
) -> str:
    """The Markdown table of ``results`` (their two ``scores``), differences taken against the
    variant ``baseline``."""
    base = next(entry for entry in results if entry.name == baseline)

    def mean_pm_std(values: Sequence[float]) -> str:
        mean, std = mean_std(values)
        if mean is None:
            return "n/a"
        return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"

    def comparison(values: Sequence[float], base_values: Sequence[float]) -> List[str]:
        difference, exceeds = compare(values, base_values)
        exceeds_text = "n/a" if exceeds is None else ("yes" if exceeds else "no")
        return ["n/a" if difference is None else f"{difference:+.2f}", exceeds_text]

    rows = []
    for entry in results:
        if entry is base:
            deltas = ["baseline", "", "baseline", ""]
        else:
            deltas = [*comparison(entry.first, base.first), *comparison(entry.second, base.second)]
        seconds = f"{statistics.mean(entry.seconds):.0f}" if entry.seconds else "n/a"
        params = "n/a" if entry.params is None else f"{entry.params / 1e6:.2f}"
        rows.append([
            entry.name, f"{len(entry.first)}/{entry.seeds_requested}",
            mean_pm_std(entry.first), mean_pm_std(entry.second), *deltas, seconds, params,
        ])  # fmt: skip
    (first, _), (second, _) = scores
    header = [
        "Variant", "Seeds done", first, second, f"Δ {first}", f"Δ {first} > spread",
        f"Δ {second}", f"Δ {second} > spread", "Train time (s)", "Params (M)",
    ]  # fmt: skip
    return markdown_table(header, rows)


def table_notes(dataset: str, baseline: str, scores: Sequence[Score]) -> str:
    names = {
        SEM_SEG_SCORES: "mIoU and boundary F-score (mBF)",
        MASK_SCORES: "Mask AP and box AP (COCO AP@[.5:.95])",
        BOX_SCORES: "Box AP (COCO AP@[.5:.95]) and box AP50",
    }[tuple(scores)]
    return (
        f"{names} in percent on {dataset}: mean ± sample std over the "
        f"finished seeds. Δ: difference of means vs the baseline {baseline}. > spread: |Δ| "
        "exceeds the larger of the two variants' sample stds (a screen, not a significance "
        "test; n/a below 2 seeds each). Train time: mean wall time of train_net.py per run."
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variant", nargs="+", action="append", required=True, metavar="WORD",
        help="NAME CONFIG [KEY=VALUE ...]: a config and its overrides (repeat per variant)",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, required=True, help="SEED of the runs")
    parser.add_argument("--baseline", help="the variant compared against (default: the first)")
    parser.add_argument(
        "--schedule-scale", type=float, default=1.0,
        help="multiply SOLVER.MAX_ITER, STEPS, WARMUP_ITERS, HILA_WARMUP_ITERS and "
        "CHECKPOINT_PERIOD by this",
    )  # fmt: skip
    parser.add_argument("--output-dir", type=Path, required=True, help="<variant>/seed<k> under it")
    parser.add_argument(
        "--table-only", action="store_true", help="print the table of the finished runs, train none"
    )  # fmt: skip
    parser.add_argument("opts", nargs="*", help="KEY VALUE options of every run, after --")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    variants = [Variant.parse(words) for words in args.variant]
    baseline = args.baseline or variants[0].name
    if baseline not in [variant.name for variant in variants]:
        raise ValueError(
            f"--baseline {baseline!r} is none of the variants {[v.name for v in variants]}"
        )
    output_dir = args.output_dir.resolve()
    runs = plan_runs(variants, args.seeds, args.opts, args.schedule_scale, output_dir)
    if not args.table_only:
        train_all(runs)
    scores = runs[0].scores
    print(ablation_table(collect_results(runs), baseline, scores))
    print()
    print(table_notes(runs[0].cfg.DATASETS.TEST[0], baseline, scores))


if __name__ == "__main__":
    main()
