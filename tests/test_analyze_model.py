"""tools/analyze_model.py: parameters and fvcore FLOPs of a tiny config against counts taken
directly on the same model, ``-n`` inputs, the refused flag combinations, and ``--published``
on its smallest settings (B0 and B0 + S3 at 64x64; HAT-Net-T at 224x224 against
docs/design/hatnet.md §4)."""
import contextlib
import io

import pytest
import torch
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from project_config import load_config, load_script

from benchmarks import published
from benchmarks.profiling import sdpa_flop_jit

CONFIG = "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"
PLAIN_CONFIG = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
PUBLISHED_B0 = ("segformer_mit_b0", "hila_mit_b0_s3")


def analyze(argv) -> str:
    """What ``tools/analyze_model.py argv`` prints."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        load_script("tools/analyze_model.py").main(argv)
    return stdout.getvalue()


def table_rows(text: str) -> dict:
    """The rows of the Markdown tables in ``text`` by first cell (headers and ``---`` left
    out)."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("module", "operator", "---"):
            rows[cells[0]] = cells
    return rows


def section(output: str, title: str) -> str:
    """The text under the heading that contains ``title``, up to the next heading."""
    return output.split(title, 1)[1].split("\n###", 1)[0]


def test_parameters_are_the_built_models():
    output = analyze(["--config-file", CONFIG, "--tasks", "parameter", "--max-depth", "1"])
    model = build_model(load_config(CONFIG))
    rows = {cells[0]: int(cells[1].replace(",", "")) for cells in table_rows(output).values()}
    expected = {"model": sum(p.numel() for p in model.parameters())}
    expected.update(
        {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    )
    assert rows == {name: count for name, count in expected.items() if count}


def test_flops_equal_fvcore_on_the_same_model():
    argv = ["--config-file", PLAIN_CONFIG, "--tasks", "flop", "--size", "64", "128", "-n", "2"]
    output = analyze(argv)
    total = output.split("Total FLOPs over 2 input(s): ", 1)[1].split("\n", 1)[0]
    mean, std = (int(value.replace(",", "")) for value in total.split(" ± "))
    model = build_model(load_config(PLAIN_CONFIG)).eval()
    images = [{"image": torch.rand(3, 64, 128) * 255}]
    adapter = TracingAdapter(model, images, allow_non_tensor=True)
    analysis = FlopCountAnalysis(adapter, adapter.flattened_inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    with torch.no_grad():
        assert mean == round(analysis.total()) and std == 0  # random images of one size
    by_operator = {op: float(cells[1]) for op, cells in table_rows(section(output, "operator"))
                   .items()}  # fmt: skip
    assert by_operator["scaled_dot_product_attention"] > 0  # the handle counted the attention
    assert sum(by_operator.values()) == pytest.approx(mean / 1e9, abs=1e-3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "parameter"], "give --config-file FILE and --tasks (or --published)"),
        (["--config-file", CONFIG], "give --config-file FILE and --tasks (or --published)"),
        (["--config-file", CONFIG, "--tasks", "speed"], "invalid choice: 'speed'"),
        (["--config-file", CONFIG, "--tasks", "flop", "-n", "0"], "-n/--num-inputs must be >= 1"),
        (["--config-file", CONFIG, "--tasks", "flop", "--only", "segformer_mit_b0"],
         "--models, --dataset and --only choose the models of --published"),
        (["--published", "--config-file", CONFIG], "drop --config-file"),
        (["--published", "--tasks", "activation"], "--published counts parameter and flop only"),
        (["--published", "--only", "b0"], "unknown --only keys ['b0']"),
        (["--published", "--size", "100", "64"], "--size must be positive multiples of 32"),
    ],
)  # fmt: skip
def test_refused_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("tools/analyze_model.py").parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_config_names_the_problem():
    with pytest.raises(FileNotFoundError, match="neither a file nor a file under the repository"):
        analyze(["--config-file", "configs/none.yaml", "--tasks", "parameter"])


def published_rows(output: str, title: str) -> dict:
    """Rows of the table under the heading containing ``title``, by model key."""
    rows = {}
    for line in section(output, title).splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("|") and "`" in cells[0]:
            rows[cells[0].split("`")[1]] = cells
    return rows


def published_b0(*argv: str) -> str:
    return analyze(
        ["--published", "--models", "mit", "--size", "64", "64", "--only", *PUBLISHED_B0, *argv]
    )


def test_published_b0_parameters():
    output = published_b0("--tasks", "parameter")
    configs = {model.key: model.configs["ade"] for model in published.MODELS}
    built = {key: build_model(load_config(f"configs/{configs[key]}")) for key in PUBLISHED_B0}
    assert "torch " in output and "1×3×64×64" in output
    for part in ("encoders", "segmentors"):
        rows = published_rows(output, f"{part}, ADE20K, 64×64")
        assert set(rows) == set(PUBLISHED_B0)
        for key, cells in rows.items():
            counted = built[key].backbone if part == "encoders" else built[key]
            assert cells[1] == f"{sum(p.numel() for p in counted.parameters()) / 1e6:.3f}"
            assert cells[3] == cells[6] == "–"  # FLOPs not counted
        hila, base = (float(rows[key][1]) for key in ("hila_mit_b0_s3", "segformer_mit_b0"))
        assert float(rows["hila_mit_b0_s3"][5]) == pytest.approx(hila - base, abs=1.1e-3)
    segmentors = published_rows(output, "segmentors, ADE20K, 64×64")
    assert segmentors["hila_mit_b0_s3"][1] == "4.178"  # §9.2's 4.197 M less conv_seg
    assert segmentors["hila_mit_b0_s3"][2] == "4.197"
    assert "Ops fvcore skipped" not in output


@pytest.mark.slow  # traces four encoders and segmentors: over 5 s
def test_published_b0_gflops():
    output = published_b0()
    for part in ("encoders", "segmentors"):
        rows = published_rows(output, f"{part}, ADE20K, 64×64")
        base, hila = rows["segformer_mit_b0"], rows["hila_mit_b0_s3"]
        assert float(hila[3]) > float(base[3])  # GFLOPs fvcore
        delta = float(hila[3]) - float(base[3])  # of rounded numbers: within 0.001
        assert float(hila[6]) == pytest.approx(delta, abs=1.1e-3)  # Δ GFLOPs fvcore
    assert "Ops fvcore skipped (not counted), per model:" in output


@pytest.mark.slow  # traces HAT-Net-T at 224x224: over 5 s
def test_published_hatnet_tiny_matches_the_published_counts():
    """HAT-Net-T at 224x224: docs/design/hatnet.md §4's backbone params, and its fvcore total of
    the classification model (2.146 G, of which the classifier is 0.0004 G)."""
    output = analyze(
        ["--published", "--models", "hatnet", "--size", "224", "224",
         "--only", "semantic_fpn_hatnet_t"]
    )  # fmt: skip
    (encoder,) = published_rows(output, "encoders, ADE20K, 224×224").values()
    assert encoder[1] == "12.271" and encoder[2] == "12.2709"
    assert abs(float(encoder[3]) - 2.1456) < 0.001 and encoder[4] == "2.146"
    (segmentor,) = published_rows(output, "segmentors, ADE20K, 224×224").values()
    config = "configs/ade20k/semantic-segmentation/hatnet/semantic_fpn_hatnet_t_40k.yaml"
    model = build_model(load_config(config))
    assert segmentor[1] == f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f}"
    assert float(segmentor[3]) > float(encoder[3])
