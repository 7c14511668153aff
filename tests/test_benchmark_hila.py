"""tools/benchmark_hila.py on its smallest setting: B0 and B0 + S3 at 64x64."""

from detectron2.modeling import build_model

from project_config import load_config, load_script


def load_benchmark():
    return load_script("tools/benchmark_hila.py")


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


def test_hatnet_tiny_matches_the_spec_counts(capsys):
    """HAT-Net-T at 224x224: docs/design/hatnet.md §4's backbone params, and its fvcore total of the
    classification model (2.146 G, of which the classifier is 0.0004 G)."""
    benchmark = load_benchmark()
    benchmark.main(
        ["--models", "hatnet", "--size", "224", "224", "--no-latency", "--threads", "1",
         "--only", "semantic_fpn_hatnet_t"]
    )  # fmt: skip
    output = capsys.readouterr().out
    (encoder,) = table_rows(output, "encoders, ADE20K, 224×224").values()
    assert encoder[1] == "12.271" and encoder[2] == "12.2709"
    assert abs(float(encoder[3]) - 2.1456) < 0.001 and encoder[4] == "2.146"
    (segmentor,) = table_rows(output, "segmentors, ADE20K, 224×224").values()
    model = build_model(load_config("configs/ade20k/semantic-segmentation/hatnet/semantic_fpn_hatnet_t_40k.yaml"))
    assert segmentor[1] == f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f}"
    assert float(segmentor[3]) > float(encoder[3])
