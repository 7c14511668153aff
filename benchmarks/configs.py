"""The project's config files as the benchmarks and the analysis tool read them: a path given
relative to the repository works from any directory, SyncBN (which needs GPUs and a process
group) becomes BatchNorm."""

from pathlib import Path
from typing import Sequence

from detectron2.config import CfgNode

from hila_d2.config import load_single_process_config

__all__ = ["REPOSITORY", "benchmark_config", "project_file"]

# the repository this folder lies in (benchmarks/ is not installed with hila_d2): configs/ is there
REPOSITORY = Path(__file__).resolve().parents[1]


def project_file(path: str) -> str:
    """``path`` when it exists (absolute or relative to the working directory), else the file of
    that path in the repository; FileNotFoundError naming both when neither exists."""
    if Path(path).exists():
        return path
    in_repository = REPOSITORY / path
    if in_repository.exists():
        return str(in_repository)
    raise FileNotFoundError(
        f"{path!r} is neither a file nor a file under the repository {REPOSITORY}; pass a config "
        "path such as configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
    )


def benchmark_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """``hila_d2.load_config`` of ``project_file(config_file)`` and the ``KEY VALUE`` pairs of
    ``opts``, with ``MODEL.SEM_SEG_HEAD.NORM`` BN where the config asks for SyncBN."""
    return load_single_process_config(project_file(config_file), opts)
