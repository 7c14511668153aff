"""tools/benchmark.py hmsa-memory on a tiny setting: both variants measured, the explicit
baseline built as docs/design/hmsa.md §2.4 describes, 3-scale explicit training costing more
memory than 2-scale hierarchical training, ratios consistent with the table's own numbers, and
the refused inputs."""

import pytest
from project_config import load_script


def load_benchmark():
    return load_script("tools/benchmark.py")


def table_rows(output: str) -> dict:
    """The Markdown table's rows by their first cell."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("training", "---"):
            rows[cells[0]] = cells
    return rows


def test_tiny_setting_table(capsys):
    benchmark = load_benchmark()
    benchmark.main(
        ["hmsa-memory", "--size", "64", "64", "--batch", "1", "--repeats", "1", "--threads", "1",
         "--device", "cpu"]
    )  # fmt: skip
    output = capsys.readouterr().out
    assert "batch 1, crop 64×64" in output and "device: cpu" in output
    rows = table_rows(output)
    hierarchical = rows["hierarchical (HMSA)"]
    explicit = rows["explicit attention (Chen et al.)"]
    ratio = rows["ratio explicit / hierarchical"]
    assert hierarchical[1:3] == ["0.5, 1", "1.25"] and explicit[1:3] == ["0.5, 1, 2", "5.25"]
    # the built-in config's attention head: 3x3 256->64 and 64->64 (no bias), BN, 1x1 64->1
    assert hierarchical[3] == f"{(256 * 64 * 9 + 64 * 64 * 9 + 2 * 2 * 64 + 64) / 1e6:.3f} M"
    # explicit: 3x3 conv (3 scales x 256 channels -> 512, bias), ReLU, 1x1 512 -> 3 (bias)
    assert explicit[3] == f"{(3 * 256 * 512 * 9 + 512 + 512 * 3 + 3) / 1e6:.3f} M"
    h_mem, e_mem = float(hierarchical[4]), float(explicit[4])
    h_ms, e_ms = float(hierarchical[5]), float(explicit[5])
    assert 0 < h_mem < e_mem and 0 < h_ms < e_ms
    assert ratio[2] == "4.20"
    assert float(ratio[4].strip("*")) == pytest.approx(e_mem / h_mem, abs=0.02)
    assert float(ratio[5]) == pytest.approx(e_ms / h_ms, abs=0.02)


def test_crop_that_a_scale_cannot_divide_is_refused():
    benchmark = load_benchmark()
    # 0.5 x 96 = 48 is not a multiple of the backbone's size divisibility 32
    with pytest.raises(ValueError, match=r"--size 96 96: every scale"):
        benchmark.main(["hmsa-memory", "--size", "96", "96", "--repeats", "1", "--threads", "1",
                        "--device", "cpu"])  # fmt: skip


def test_a_config_without_hmsa_is_refused():
    with pytest.raises(ValueError, match=r"builds SemanticSegmentor; pass an HMSA config"):
        load_benchmark().main(
            ["hmsa-memory", "--config-file", "configs/builtin/semantic-segmentation/"
             "segformer_mit_b0.yaml", "--repeats", "1", "--device", "cpu"]
        )  # fmt: skip
