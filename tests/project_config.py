"""Shared by the tests: the project's YAML configs loaded for CPU runs, scripts imported as
modules, the optimizer hyperparameters of each parameter, and checks of bf16 results that
tell this machine's faulty kernels from hila_d2 bugs."""
import importlib.util
from pathlib import Path
from typing import Any, Callable, List

import pytest
from detectron2.config import CfgNode, get_cfg

import hila_d2
from hila_d2.utils.kernel_audit import KernelAudit, KernelFault, onednn_off

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


def judged_on_sound_kernels(run: Callable[[KernelAudit], Any], check: Callable[[Any], None]):
    """``check(run(audit))``, on sound bf16 kernels: ``run`` computes a bf16 result with its
    forward passes under ``audit``, ``check`` asserts on that result. Where the audit finds faulty
    kernels of this machine, both run again with oneDNN off (``onednn_off``: torch's CPU
    convolutions and matmuls take ATen's own kernels), and that run judges hila_d2. The test is
    skipped, naming the kernels, only where that run's kernels are faulty too and its check
    fails; a failure on sound kernels stands. ``run`` must compute the same on a second call
    (build its model afresh, seed its randomness)."""
    audit = KernelAudit()
    result = run(audit)
    if not audit.faults:
        check(result)
        return
    native = audit.faults
    audit = KernelAudit()
    with onednn_off():
        result = run(audit)
    try:
        check(result)
    except AssertionError as failure:
        if not audit.faults:
            raise
        pytest.skip(
            f"this machine's bf16 kernels are wrong natively ({_listed(native)}) and with oneDNN "
            f"off ({_listed(audit.faults)}); the check that failed "
            f"({str(failure).splitlines()[0]}) cannot judge hila_d2 on top of them"
        )


def _listed(faults: List[KernelFault]) -> str:
    more = f" and {len(faults) - 3} more" if len(faults) > 3 else ""
    return "; ".join(map(str, faults[:3])) + more
