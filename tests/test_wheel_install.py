"""What ``pip install hila_d2`` installs is the library, and the library alone trains and predicts:
the wheel built from the repository holds ``hila_d2/`` (every module of it) and its dist-info
only, none of the repository's benchmarks/, tests/, tools/ or configs/; installed into a scratch
environment that has the same dependencies but not the editable install, and run from outside the
repository, it builds a SegFormer MiT-B0 + HILA S3 from a config written in code, trains one step
(a finite loss, a gradient for every trainable parameter) and predicts, through detectron2's
DefaultPredictor, a semantic segmentation of the input image's size."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from project_config import REPO

NUM_CLASSES = 7
# Run by the scratch environment's interpreter, from a directory outside the repository:
# argv[1] is the directory the wheel was installed into.
SCRIPT = f"""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

site = Path(sys.argv[1]).resolve()
import hila_d2

assert Path(hila_d2.__file__).resolve().is_relative_to(site), hila_d2.__file__
assert importlib.util.find_spec("benchmarks") is None, "the repository's benchmarks/ is visible"

from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

# configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml and its bases, as the keys that
# build the model (the wheel ships no configs)
cfg = hila_d2.add_hila_config(get_cfg())
cfg.MODEL.DEVICE = "cpu"
cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
cfg.MODEL.BACKBONE.NAME = "build_mit_backbone"
cfg.MODEL.MIT.VARIANT = "B0"
cfg.MODEL.MIT.DROP_PATH_RATE = 0.0
cfg.MODEL.HILA.STAGES = [3]
cfg.MODEL.SEM_SEG_HEAD.NAME = "SegFormerHead"
cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
cfg.MODEL.SEM_SEG_HEAD.EMBED_DIM = 256
cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = {NUM_CLASSES}
cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
cfg.INPUT.FORMAT = "RGB"
cfg.INPUT.MIN_SIZE_TEST = 64
cfg.INPUT.MAX_SIZE_TEST = 128
hila_d2.validate_config(cfg)

torch.manual_seed(0)
model = build_model(cfg)
model.train()
batch = [
    {{
        "image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8),
        "sem_seg": torch.randint(0, {NUM_CLASSES}, (64, 64)),
        "height": 64,
        "width": 64,
    }}
    for _ in range(2)
]
losses = model(batch)
loss = sum(losses.values())
assert torch.isfinite(loss), losses
loss.backward()
trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
assert any("hila" in n for n, _ in trainable), "no HILA parameters: MODEL.HILA.STAGES ignored"
no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
assert not no_grad, f"no finite gradient: {{no_grad}}"

predictor = DefaultPredictor(cfg)
image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)  # BGR
sem_seg = predictor(image)["sem_seg"]
assert tuple(sem_seg.shape) == ({NUM_CLASSES}, 48, 80), tuple(sem_seg.shape)
assert torch.isfinite(sem_seg).all()
print("trained and predicted with", hila_d2.__file__)
"""


def run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def repository_files():
    """The repository's files as git lists them (tracked, and untracked ones .gitignore does
    not exclude), relative to it: what a checkout holds, without build outputs."""
    listed = run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO
    ).stdout.splitlines()
    return [name for name in listed if (REPO / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the repository (built in place, setuptools would
    leave build/ and an egg-info in the checkout, and a stale build/lib ships deleted modules)."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"
    for name in repository_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "-w", str(scratch / "dist"), str(source)],
        cwd=scratch,
    )  # fmt: skip
    [built] = (scratch / "dist").glob("hila_d2-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_the_library_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    dist_info = {top for top in tops if top.startswith("hila_d2-") and top.endswith(".dist-info")}
    assert len(dist_info) == 1 and tops == {"hila_d2", *dist_info}, sorted(tops)
    modules = {
        name for name in repository_files() if name.startswith("hila_d2/") and name.endswith(".py")
    }
    missing = modules - set(names)
    assert not missing, f"modules of hila_d2/ missing from the wheel: {sorted(missing)}"


@pytest.mark.slow
def test_the_installed_wheel_trains_and_predicts_outside_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--target", str(site), str(wheel)])  # fmt: skip
    # The scratch environment sees the wheel, then this environment's packages as plain path
    # entries: a .pth line that names a directory only appends it to sys.path, so the editable
    # install's finder (executed by an import line of a .pth of that directory) never runs.
    env = tmp_path / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    python = env / "bin" / "python"
    env_site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    ours = dict.fromkeys(
        [str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    )
    (Path(env_site) / "hila_d2_scratch.pth").write_text("\n".join(ours) + "\n")

    workdir = tmp_path / "run"
    workdir.mkdir()
    assert not workdir.resolve().is_relative_to(REPO.resolve())
    (workdir / "check.py").write_text(SCRIPT)
    clean = {"PATH": os.environ["PATH"], "HOME": str(workdir)}
    if "OMP_NUM_THREADS" in os.environ:  # this worker's share of the cores (tests/conftest.py)
        clean["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    result = run([str(python), "-I", "check.py", str(site)], cwd=workdir, env=clean, timeout=300)
    assert "trained and predicted with" in result.stdout
