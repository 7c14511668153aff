"""tools/benchmark.py on a tiny setting: MiT-B0, Swin-T and HAT-Net-T at 64x64, one timed step,
Swin window 2 (every stage grid a multiple of it, where timm's window order equals ours): the
rows, identical outputs against the references, ratios and images/s consistent with the table's
own numbers, HAT-Net without a reference, and the refused options."""

import contextlib
import io

import pytest
import torch
import transformers
from project_config import load_script

TINY = [
    "--size", "64", "64", "--batch", "1", "--warmup", "0", "--repeats", "1", "--threads", "1",
    "--device", "cpu", "--mit", "B0", "--swin", "T", "--hatnet", "T",
    "--opts", "MODEL.HILA_D2_SWIN.WINDOW_SIZE", "2",
]  # fmt: skip
STEPS = ("inference", "training step")
ENCODERS = [  # (encoder, implementation, ratio over)
    ("MiT-B0", "transformers SegformerModel", ""),
    ("MiT-B0", "hila_d2", "reference"),
    ("MiT-B0 + HILA S3", "hila_d2", "plain"),
    ("Swin-T", "timm SwinTransformer", ""),
    ("Swin-T", "hila_d2", "reference"),
    ("Swin-T + HILA S234", "hila_d2", "plain"),
    ("HAT-Net-T", "hila_d2", "—"),
    ("HAT-Net-T + HILA S3", "hila_d2", "plain"),
]


def load_benchmark():
    return load_script("tools/benchmark.py")


@pytest.fixture(scope="module")
def output() -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        load_benchmark().main(TINY)
    return stdout.getvalue()


def table_rows(output: str) -> dict:
    """The Markdown table's rows by (encoder, implementation, step), in order."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("encoder", "---"):
            rows[tuple(cells[:3])] = cells
    return rows


def baseline_key(key: tuple, over: str) -> tuple:
    """The row that the ratios of row ``key`` divide by."""
    encoder, _, step = key
    if over == "plain":
        return encoder.split(" + HILA")[0], "hila_d2", step
    (implementation,) = [i for e, i, o in ENCODERS if e == encoder and o == ""]
    return encoder, implementation, step


def test_one_table_with_every_row(output):
    assert output.count("| encoder |") == 1
    assert f"transformers {transformers.__version__}" in output
    assert "device: cpu" in output and "torch threads: 1" in output and "1×3×64×64" in output
    rows = table_rows(output)
    families = [ENCODERS[:3], ENCODERS[3:6], ENCODERS[6:]]
    expected = [(e, i, step) for family in families for step in STEPS for e, i, _ in family]
    assert list(rows) == expected
    for encoder, implementation, over in ENCODERS:
        for step in STEPS:
            assert rows[encoder, implementation, step][6] == over


def test_ours_equals_the_references(output):
    rows = table_rows(output)
    for encoder in ("MiT-B0", "Swin-T"):
        assert float(rows[encoder, "hila_d2", "inference"][10]) < 1e-4
        assert rows[encoder, "hila_d2", "training step"][10] == ""
    # Swin window 2 divides every stage grid at 64x64, so no note on timm's window order
    assert "some stage grid is no multiple of the window" not in output


def test_numbers_and_ratios_agree(output):
    rows = table_rows(output)
    for key, cells in rows.items():
        images_per_s, latency, memory = (float(c) for c in cells[3:6])
        assert latency > 0 and memory > 0
        assert images_per_s == pytest.approx(1000 / latency, rel=1e-3)
        if cells[6] in ("reference", "plain"):
            base = [float(c) for c in rows[baseline_key(key, cells[6])][3:6]]
            ratios = [float(c) for c in cells[7:10]]
            expected = [images_per_s / base[0], latency / base[1], memory / base[2]]
            assert ratios == pytest.approx(expected, abs=0.01), key
    for encoder in ("MiT-B0 + HILA S3", "Swin-T + HILA S234", "HAT-Net-T + HILA S3"):
        assert float(rows[encoder, "hila_d2", "training step"][9]) > 1  # HILA's extra memory


def test_hatnet_has_no_reference(output):
    rows = table_rows(output)
    for step in STEPS:
        assert rows["HAT-Net-T", "hila_d2", step][6:] == ["—"] * 5
    assert "HAT-Net: no library implements it" in output


def test_swin_note_off_the_window_grid():
    benchmark = load_benchmark()
    args = benchmark.parse_args(["--size", "64", "64", "--swin", "T", "--mit", "none"])
    assert args.mit == [] and args.hatnet == ["T"]
    notes = benchmark.notes(args, torch.device("cpu"))
    assert "some stage grid is no multiple of the window (7)" in notes[-1]
    assert "Multiples of 224" in notes[-1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "100", "64"], "--size must be positive multiples of 32, got 100 64"),
        (["--mit", "B9"], "invalid choice: 'B9'"),
        pytest.param(
            ["--device", "cuda"],
            "--device cuda: CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
        ),
    ],
)
def test_refused_options(argv, message, capsys):
    with pytest.raises(SystemExit):
        load_benchmark().parse_args(argv)
    assert message in capsys.readouterr().err
