"""Fixtures shared by the tests: the project's YAML configs for CPU runs (``cpu_config``) and the
training entry points run in a subprocess (``train_net``), which only tests marked ``slow`` may
use; under pytest-xdist (``-n``) each worker gets its share of the CPU threads, and the files that
train are handed out first."""
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from project_config import REPO, load_config


def pytest_configure(config):
    """In an xdist worker, give torch (and, through OMP_NUM_THREADS, the training runs it starts)
    ``cpu_count / workers`` threads: each worker running torch's default of one thread per core
    would oversubscribe the machine ``workers`` times over."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_report_header(config):
    """The CPU and the kernels torch picks on it (bf16 results depend on them; see
    hila_d2.utils.kernel_audit)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    features = {
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),
    }
    return (
        f"cpu: {names[0] if names else platform.processor() or 'unknown'}, "
        f"{os.cpu_count()} cores; torch {torch.__version__}, "
        f"kernels {torch.backends.cpu.get_cpu_capability()}, "
        + ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in features.items())
    )


def pytest_collection_modifyitems(config, items):
    """The test files that run a training entry point (the ``train_net`` fixture) first, then
    the other files that hold a ``slow`` test, then the rest; each file's tests kept together
    and in order. pytest-xdist (with pyproject's ``--dist loadfile --no-loadscope-reorder``)
    hands out whole files in this order, so the long files start early and the short ones fill
    in around them, instead of a long file starting last on one worker while the others idle."""
    files: Dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def tier(name: str) -> int:
        if any("train_net" in test.fixturenames for test in files[name]):
            return 0
        return 1 if any(test.get_closest_marker("slow") for test in files[name]) else 2

    order = sorted(files, key=tier)  # stable: within a tier, as collected
    items[:] = [item for name in order for item in files[name]]


def pytest_runtest_setup(item):
    """Tests marked ``cuda`` skip where torch sees no CUDA GPU."""
    if item.get_closest_marker("cuda") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")


def parse_final_metrics(log: str) -> Dict[str, float]:
    """The last evaluation results in ``log`` as ``task/metric`` -> value (e.g.
    ``"sem_seg/mIoU"``), read from the ``copypaste:`` lines that detectron2's
    ``print_csv_format`` writes after an evaluation (a task line, a names line, a values line);
    ``{}`` when the run did not evaluate."""
    lines = [line.split("copypaste: ", 1)[1] for line in log.splitlines() if "copypaste: " in line]
    metrics: Dict[str, float] = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: "):
            task, names, values = line[len("Task: ") :], lines[i + 1], lines[i + 2]
            metrics.update(
                {f"{task}/{n}": float(v) for n, v in zip(names.split(","), values.split(","))}
            )
    return metrics


@dataclass
class TrainingRun:
    """One finished run of a training entry point: its process, its output directory and the
    evaluation results it logged last (:func:`parse_final_metrics`)."""

    process: subprocess.CompletedProcess
    output_dir: Path
    final_metrics: Dict[str, float]

    @property
    def log(self) -> str:
        """What the process printed (rank 0's log): stdout, then stderr."""
        return self.process.stdout + self.process.stderr

    def losses(self) -> Dict[int, float]:
        """Iteration -> logged training loss, from ``metrics.json`` (every run into
        ``output_dir`` so far)."""
        lines = (self.output_dir / "metrics.json").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        return {r["iteration"]: r["total_loss"] for r in records if "total_loss" in r}

    def assert_loss_fell(self, factor: float = 1.0) -> None:
        """The last logged training loss is below ``factor`` times the first."""
        losses = list(self.losses().values())
        assert losses[-1] < factor * losses[0], f"training loss fell too little: {losses}"


class TrainNet:
    """Runs ``train_net.py`` (``lazyconfig_train_net.py`` for a lazy ``.py`` config) from the
    repository root in a subprocess: ``train_net(config, *opts)`` trains (and evaluates, as the
    config says) into a fresh directory under the session's temporary directory and returns the
    :class:`TrainingRun`; a failed run fails the test with the end of its output."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, shared_runs: dict):
        self._tmp_path_factory = tmp_path_factory
        self._shared_runs = shared_runs

    def command(
        self,
        config: str,
        *opts: str,
        output_dir: Path,
        flags: Sequence[str] = (),
        processes: int = 1,
    ) -> List[str]:
        """The command line: ``flags`` (e.g. ``--eval-only``, ``--resume``), ``processes`` CPU
        ranks (gloo, on a free port: detectron2's default port is fixed per user, so two
        suites at once would collide), then ``opts`` (YAML ``KEY VALUE`` pairs, or lazy
        ``key=value`` overrides) and the output directory, which wins over any in ``opts``."""
        if processes > 1:
            flags = [*flags, "--num-gpus", str(processes), "--dist-url", "auto"]
        if config.endswith(".py"):
            script, output = "lazyconfig_train_net.py", [f"train.output_dir={output_dir}"]
        else:
            script, output = "train_net.py", ["OUTPUT_DIR", str(output_dir)]
        return [sys.executable, script, *flags, "--config-file", config, *opts, *output]

    @staticmethod
    def environment() -> Dict[str, str]:
        return {**os.environ, "PYTHONWARNINGS": "ignore"}

    def __call__(
        self, config: str, *opts: str, output_dir: Optional[Path] = None, **options
    ) -> TrainingRun:
        """Run to the end; ``options`` as in :meth:`command`."""
        output_dir = output_dir or self._tmp_path_factory.mktemp("train_net")
        process = subprocess.run(
            self.command(config, *opts, output_dir=output_dir, **options),
            cwd=REPO,
            capture_output=True,
            text=True,
            env=self.environment(),
        )
        assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
        return TrainingRun(process, output_dir, parse_final_metrics(process.stdout))

    def shared(self, config: str, *opts: str, **options) -> TrainingRun:
        """The same as a call, run once per test session for these arguments: the tests that
        assert different properties of one training run share it. They must not write into
        its output directory."""
        key = repr((config, opts, sorted(options.items())))
        if key not in self._shared_runs:
            self._shared_runs[key] = self(config, *opts, **options)
        return self._shared_runs[key]


@pytest.fixture(scope="session")
def _shared_training_runs() -> dict:
    return {}


@pytest.fixture
def train_net(request, tmp_path_factory, _shared_training_runs) -> TrainNet:
    """The :class:`TrainNet` runner, for tests marked ``slow`` only."""
    if request.node.get_closest_marker("slow") is None:
        pytest.fail(
            f"{request.node.nodeid} runs a training entry point but is not marked slow: "
            "decorate it with @pytest.mark.slow (or set pytestmark = pytest.mark.slow in its "
            "module) so that `pytest -m 'not slow'` leaves it out",
            pytrace=False,
        )
    return TrainNet(tmp_path_factory, _shared_training_runs)


@pytest.fixture
def cpu_config():
    """:func:`project_config.load_config`: a YAML config of the repository for CPU runs."""
    return load_config
