"""Shared by the tests: detectron2's defaults with hila_d2's keys, the project's YAML configs
loaded for CPU runs, scripts imported as
modules, the demo recording what it draws with, the optimizer hyperparameters of each parameter,
and checks of bf16 results that tell this machine's faulty kernels from hila_d2 bugs."""
import importlib.util
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest
from detectron2.config import CfgNode, get_cfg
from PIL import Image

from hila_d2.config import add_hila_config, load_single_process_config
from hila_d2.utils.kernel_audit import KernelAudit, KernelFault, onednn_off

REPO = Path(__file__).resolve().parents[1]


def default_config(**keys) -> CfgNode:
    """detectron2's defaults plus hila_d2's keys, then ``keys`` by full dotted name through
    ``merge_from_list`` (``default_config(**{"MODEL.MIT.VARIANT": "B1"})``). Not frozen."""
    cfg = get_cfg()
    add_hila_config(cfg)
    for key, value in keys.items():
        cfg.merge_from_list([key, value])
    return cfg


def load_config(config_file: str, *opts) -> CfgNode:
    """``config_file`` (relative to the repository) with hila_d2's keys, on CPU, then the ``KEY
    VALUE`` pairs of ``opts``, by ``load_single_process_config``: BatchNorm where the result asks
    for SyncBN (which needs GPUs). Not frozen: the tests may change it."""
    cfg = load_single_process_config(str(REPO / config_file), ["MODEL.DEVICE", "cpu", *opts])
    cfg.defrost()
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


def recording_demo(
    monkeypatch, tmp_path: Path, config: str, num_classes: int
) -> Tuple[Callable[..., None], List[Any]]:
    """(run, drawn_with): ``run(*opts)`` runs ``tools/demo.py`` with ``config`` (relative to the
    repository), no test set, ``num_classes`` classes and then ``opts`` on a blank 48x32 image
    ``tmp_path / "in.png"``, drawing to ``tmp_path / "vis.png"``; ``drawn_with`` collects the
    metadata of each ``VideoVisualizer`` the demo makes (``monkeypatch`` swaps the class)."""
    demo = load_script("tools/demo.py")
    drawn_with: List[Any] = []

    class Recording(demo.VideoVisualizer):
        def __init__(self, metadata, *args, **kwargs):
            drawn_with.append(metadata)
            super().__init__(metadata, *args, **kwargs)

    monkeypatch.setattr(demo, "VideoVisualizer", Recording)
    Image.new("RGB", (48, 32)).save(tmp_path / "in.png")
    args = ["--config-file", str(REPO / config), "--input", str(tmp_path / "in.png"),
            "--output", str(tmp_path / "vis.png"), "DATASETS.TEST", "()",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes)]  # fmt: skip
    return lambda *opts: demo.main([*args, *opts]), drawn_with


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
