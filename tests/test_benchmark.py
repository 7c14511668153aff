"""tools/benchmark.py: its sub-commands' common flags and refused options, and ``speed`` and
``latency`` on their smallest settings. ``speed``: MiT-B0, Swin-T and HAT-Net-T at 64x64, one
timed step, Swin window 2 (every stage grid a multiple of it, where timm's window order equals
ours): the rows, identical outputs against the references, ratios and images/s consistent with
the table's own numbers, HAT-Net without a reference. ``latency``: B0 and B0 + S3 at 64x64."""

import contextlib
import io

import pytest
import torch
import transformers
from project_config import load_script

from benchmarks import speed

TINY = [
    "speed", "--size", "64", "64", "--batch", "1", "--warmup", "0", "--repeats", "1",
    "--threads", "1", "--device", "cpu", "--mit", "B0", "--swin", "T", "--hatnet", "T",
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
SUB_COMMANDS = ("speed", "hila-cost", "hmsa-memory", "latency")
COMMON = ["--size", "64", "128", "--batch", "3", "--device", "cpu", "--threads", "1",
          "--warmup", "2", "--repeats", "4"]  # fmt: skip


def load_benchmark():
    return load_script("tools/benchmark.py")


def run(argv) -> str:
    """What ``tools/benchmark.py argv`` prints."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        load_benchmark().main(argv)
    return stdout.getvalue()


def markdown_rows(text: str, key_cells: int = 1) -> dict:
    """The rows of the Markdown tables in ``text`` by their first ``key_cells`` cells (header
    rows, whose first cell names a column, and ``---`` rows left out)."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("encoder", "model", "---"):
            rows[tuple(cells[:key_cells]) if key_cells > 1 else cells[0]] = cells
    return rows


@pytest.mark.parametrize("command", SUB_COMMANDS)
def test_common_flags_parse_alike_for_every_sub_command(command):
    args = load_benchmark().parse_args([command, *COMMON])
    assert args.command == command
    common = (args.size, args.batch, args.device, args.threads, args.warmup, args.repeats)
    assert common == ([64, 128], 3, "cpu", 1, 2, 4)


def test_each_sub_command_keeps_its_defaults():
    benchmark = load_benchmark()
    defaults = {
        command: benchmark.parse_args([command, "--device", "cpu"]) for command in SUB_COMMANDS
    }
    measured = {c: (a.size, a.batch, a.warmup, a.repeats) for c, a in defaults.items()}
    assert measured == {
        "speed": ((448, 448), 1, 1, 5),
        "hila-cost": ((512, 512), 1, 2, 7),
        "hmsa-memory": ((256, 256), 2, 1, 3),
        "latency": (None, 1, 1, 5),  # None: the dataset's size
    }
    assert defaults["hila-cost"].threads == 2
    assert defaults["speed"].mit == ["B0", "B2"] and defaults["hmsa-memory"].opts == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["measure"], "invalid choice: 'measure'"),
        ([], "the following arguments are required: COMMAND"),
        (["speed", "--crop", "64", "64"], "unrecognized arguments: --crop"),
        (["hila-cost", "--mit", "B0"], "unrecognized arguments: --mit"),
        (["speed", "--size", "100", "64"], "--size must be positive multiples of 32, got 100 64"),
        (["latency", "--size", "100", "64"], "--size must be positive multiples of 32, got 100 64"),
        (["hila-cost", "--size", "0", "64"], "--size must be positive, got 0 64"),
        (["speed", "--mit", "B9"], "invalid choice: 'B9'"),
        (["hila-cost", "--cases", "mit-b9"], "invalid choice: 'mit-b9'"),
        (["hmsa-memory", "--repeats", "0"], "--repeats and --threads must be >= 1"),
        (["hmsa-memory", "--warmup", "0"], "--warmup >= 1"),
        (["speed", "--warmup", "-1"], "--warmup >= 0"),
        (["latency", "--only", "segformer_mit_b9"], "unknown --only keys ['segformer_mit_b9']"),
        pytest.param(
            ["hila-cost", "--device", "cuda"],
            "--device cuda: CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
        ),
    ],
)
def test_refused_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_benchmark().parse_args(argv)
    assert exit_info.value.code == 2  # argparse's usage error
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def speed_output() -> str:
    return run(TINY)


def baseline_key(key: tuple, over: str) -> tuple:
    """The row that the ratios of row ``key`` divide by."""
    encoder, _, step = key
    if over == "plain":
        return encoder.split(" + HILA")[0], "hila_d2", step
    (implementation,) = [i for e, i, o in ENCODERS if e == encoder and o == ""]
    return encoder, implementation, step


@pytest.mark.slow
def test_speed_one_table_with_every_row(speed_output):
    assert speed_output.count("| encoder |") == 1
    assert f"transformers {transformers.__version__}" in speed_output
    assert "device: cpu" in speed_output and "torch threads: 1" in speed_output
    assert "1×3×64×64" in speed_output
    rows = markdown_rows(speed_output, key_cells=3)
    families = [ENCODERS[:3], ENCODERS[3:6], ENCODERS[6:]]
    expected = [(e, i, step) for family in families for step in STEPS for e, i, _ in family]
    assert list(rows) == expected
    for encoder, implementation, over in ENCODERS:
        for step in STEPS:
            assert rows[encoder, implementation, step][6] == over


@pytest.mark.slow
def test_speed_ours_equals_the_references(speed_output):
    rows = markdown_rows(speed_output, key_cells=3)
    for encoder in ("MiT-B0", "Swin-T"):
        assert float(rows[encoder, "hila_d2", "inference"][10]) < 1e-4
        assert rows[encoder, "hila_d2", "training step"][10] == ""
    # Swin window 2 divides every stage grid at 64x64, so no note on timm's window order
    assert "some stage grid is no multiple of the window" not in speed_output


@pytest.mark.slow
def test_speed_numbers_and_ratios_agree(speed_output):
    rows = markdown_rows(speed_output, key_cells=3)
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


@pytest.mark.slow
def test_speed_hatnet_has_no_reference(speed_output):
    rows = markdown_rows(speed_output, key_cells=3)
    for step in STEPS:
        assert rows["HAT-Net-T", "hila_d2", step][6:] == ["—"] * 5
    assert "HAT-Net: no library implements it" in speed_output


def test_speed_swin_note_off_the_window_grid():
    args = load_benchmark().parse_args(["speed", "--size", "64", "64", "--mit", "none"])
    assert args.mit == [] and args.swin == ["T"] and args.hatnet == ["T"]
    notes = speed.notes(args, torch.device("cpu"))
    assert "some stage grid is no multiple of the window (7)" in notes[-1]
    assert "Multiples of 224" in notes[-1]


def test_latency_b0_tables():
    output = run(
        ["latency", "--models", "mit", "--size", "64", "64", "--repeats", "1", "--warmup", "0",
         "--threads", "1", "--device", "cpu", "--only", "segformer_mit_b0", "hila_mit_b0_s3"]
    )  # fmt: skip
    assert "device: cpu" in output and "1×3×64×64" in output
    for part in ("encoders", "segmentors"):
        section = output.split(f"{part}, ADE20K, 64×64", 1)[1].split("\n###", 1)[0]
        rows = {cells[0].split("`")[1]: cells for cells in markdown_rows(section).values()}
        assert set(rows) == {"segformer_mit_b0", "hila_mit_b0_s3"}
        base, hila = float(rows["segformer_mit_b0"][1]), float(rows["hila_mit_b0_s3"][1])
        assert base > 0 and hila > 0
        assert rows["segformer_mit_b0"][2] == "–"
        assert float(rows["hila_mit_b0_s3"][2].lstrip("×")) == pytest.approx(hila / base, abs=0.02)
    assert "Latency: median of 1 runs after 0 warm-up runs, batch 1" in output
