"""Shared by the tests: the project's YAML configs loaded for CPU runs, scripts imported as
modules, the optimizer hyperparameters of each parameter, and checks of bf16 results that
tell this machine's faulty kernels from hila_d2 bugs."""
import contextlib
import importlib.util
from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg

import hila_d2
from hila_d2.testing.kernel_audit import KernelAudit

REPO = Path(__file__).resolve().parents[1]


def load_config(config_file: str, *opts) -> CfgNode:
    """``config_file`` (relative to the repository) with hila_d2's keys, on CPU with BatchNorm for
    SyncBN (which needs GPUs), then the ``KEY VALUE`` pairs of ``opts``."""
    cfg = get_cfg()
    hila_d2.add_hila_config(cfg)
    cfg.merge_from_file(str(REPO / config_file))
    cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.SEM_SEG_HEAD.NORM == "SyncBN":
        cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.merge_from_list(list(opts))
    return cfg


def load_script(path: str):
    """The script at ``path`` (relative to the repository, e.g. "tools/benchmark.py")
    imported as a module: scripts are not part of the package, and ``import tools`` would find
    detectron2's own ``tools`` package."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_train_net():
    """``train_net.py`` imported as a module."""
    return load_script("train_net.py")


def hyperparams_by_name(model, optimizer) -> dict:
    """Trainable parameter name -> (lr, weight_decay) of its optimizer group."""
    by_id = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_id[id(p)] = (group["lr"], group["weight_decay"])
    return {name: by_id[id(p)] for name, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def unless_kernels_fault(audit: KernelAudit):
    """Checks of a bf16 result computed under ``audit``: if they fail where the audit found
    faulty bf16 kernels on this machine, the test is skipped naming them (hila_d2 cannot be
    judged on top of them); otherwise a failure stands."""
    try:
        yield
    except AssertionError as failure:
        if not audit.faults:
            raise
        faults = "; ".join(map(str, audit.faults[:3]))
        more = f" (and {len(audit.faults) - 3} more)" if len(audit.faults) > 3 else ""
        pytest.skip(
            f"this machine's bf16 kernels are wrong: {faults}{more}; the check that failed "
            f"({str(failure).splitlines()[0]}) cannot judge hila_d2 on top of them"
        )
