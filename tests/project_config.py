"""Shared by the tests: the project's YAML configs loaded for CPU runs, scripts imported as
modules, and the optimizer hyperparameters of each parameter."""
import importlib.util
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

import hila_d2

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
