"""tools/benchmark_hila.py on its smallest setting: B0 and B0 + S3 at 64x64."""

import importlib.util

from detectron2.modeling import build_model

from project_config import REPO, load_config


def load_benchmark():
    path = REPO / "tools" / "benchmark_hila.py"
    spec = importlib.util.spec_from_file_location("benchmark_hila", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(output: str, title: str) -> dict:
    """Rows of the Markdown table under the heading containing ``title``, by model key."""
    section = output.split(title, 1)[1].split("\n###", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("|") and "`" in cells[0]:
            rows[cells[0].split("`")[1]] = cells
    return rows


def test_b0_tables(capsys):
    benchmark = load_benchmark()
    benchmark.main(
        ["--models", "mit", "--size", "64", "64", "--repeats", "1", "--warmup", "0",
         "--threads", "1", "--only", "segformer_mit_b0", "hila_mit_b0_s3"]
    )  # fmt: skip
    output = capsys.readouterr().out
    configs = {model.key: model.configs["ade"] for model in benchmark.MODELS}
    assert "torch " in output and "1×3×64×64" in output

    for part in ("encoders", "segmentors"):
        rows = table_rows(output, f"{part}, ADE20K, 64×64")
        assert set(rows) == {"segformer_mit_b0", "hila_mit_b0_s3"}
        base, hila = rows["segformer_mit_b0"], rows["hila_mit_b0_s3"]
        assert float(hila[3]) > float(base[3])  # GFLOPs fvcore
        assert float(base[5]) > 0 and float(hila[5]) > 0  # latency (ms)
        for key, cells in rows.items():
            model = build_model(load_config(f"configs/{configs[key]}"))
            counted = model.backbone if part == "encoders" else model
            assert cells[1] == f"{sum(p.numel() for p in counted.parameters()) / 1e6:.3f}"
    segmentors = table_rows(output, "segmentors, ADE20K, 64×64")
    assert segmentors["hila_mit_b0_s3"][1] == "4.178"  # §9.2's 4.197 M less conv_seg
    assert segmentors["hila_mit_b0_s3"][2] == "4.197"
