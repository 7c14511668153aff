"""Shared by the tests: the project's YAML configs, loaded for CPU runs."""
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

import hila_d2

REPO = Path(__file__).resolve().parents[1]


def load_config(config_file: str, *opts) -> CfgNode:
    """``config_file`` (relative to the repository) with hila_d2's keys, on CPU with BatchNorm
    (SyncBN needs GPUs), then the ``KEY VALUE`` pairs of ``opts``."""
    cfg = get_cfg()
    hila_d2.add_hila_config(cfg)
    cfg.merge_from_file(str(REPO / config_file))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NORM", "BN", *opts])
    return cfg
