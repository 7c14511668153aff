"""tools/benchmark.py hila-cost on a small setting: MiT-B1 + S3 (and plain B2) at 64x64; the
extra timm family cases build."""
import pytest

from benchmarks import hila_cost
from hila_d2.modeling.hila import HILAPair
from project_config import load_script


def table(output: str) -> dict:
    """The cost table's rows by (encoder, implementation), the encoder carried down (the
    profile tables after it, under "####" headings, left out)."""
    rows, encoder = {}, None
    for line in output.split("\n####")[0].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or cells[0] in ("encoder", "---"):
            continue
        encoder = cells[0] or encoder
        rows[(encoder, cells[1])] = cells
    return rows


@pytest.mark.slow
def test_mit_b1_s3_table(capsys):
    benchmark = load_script("tools/benchmark.py")
    benchmark.main(
        ["hila-cost", "--device", "cpu", "--cases", "mit-b1-s3", "--size", "64", "64",
         "--repeats", "1", "--warmup", "0", "--threads", "1", "--profile", "3"]
    )  # fmt: skip
    output = capsys.readouterr().out
    rows = table(output)
    name = "MiT-B1 + S3"
    assert set(rows) == {
        (name, "plain"), (name, "HILA"), (name, "HILA, reference formulation"),
        (name, "HILA, MODEL.HILA.CHECKPOINT"), (name, "plain MiT-B2"),
    }  # fmt: skip
    plain, hila, reference = rows[(name, "plain")], rows[(name, "HILA")], rows[
        (name, "HILA, reference formulation")
    ]
    # GFLOPs counted on the same (reference) formulation: the same model, the same count
    assert hila[2] == reference[2] and float(hila[2]) > float(plain[2])
    assert float(hila[3]) == pytest.approx(float(hila[2]) / float(plain[2]), rel=0.05)  # rounded
    for cells in (plain, hila, reference):
        assert float(cells[4]) > 0 and float(cells[7]) > 0 and float(cells[8]) > 0
    assert hila[6].startswith("≤ ") and hila[6][-1] in "✓✗"
    # training-step ratio over plain, checked against 1.15 x the FLOP ratio
    assert float(hila[11]) == pytest.approx(float(hila[7]) / float(plain[7]), rel=0.05)
    bound, mark = hila[12].split()[1:]
    assert float(bound) == pytest.approx(1.15 * float(hila[3]), abs=0.02) and mark in "✓✗"
    checkpointed = rows[(name, "HILA, MODEL.HILA.CHECKPOINT")]
    assert checkpointed[4] == "–"  # its forward is HILA's
    # (at this size the parameters and their gradients dominate the peak)
    assert 0 < float(checkpointed[8]) <= float(reference[8])  # never more than storing everything
    assert "MiT-B1 + S3 latency / plain MiT-B2 latency" in output
    assert "#### MiT-B1 + S3, HILA, training step: extra over plain" in output


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(set(hila_cost.CASES) - set(hila_cost.DEFAULT_CASES)))
def test_timm_family_case_builds_its_pair(key):
    """Each extra timm case builds its model plain and with one HILA pair (a renamed timm
    model or a config it no longer fits fails here, not in a 15-minute benchmark)."""
    case = hila_cost.CASES[key]
    plain = hila_cost.build_encoder(case.plain, "cpu", case.opts)
    hila = hila_cost.build_encoder(case.hila, "cpu", case.opts)
    for encoder in (plain, hila):
        assert encoder.encoder.pretrained_cfg["architecture"] == case.opts[1]
    assert sum(isinstance(m, HILAPair) for m in hila.modules()) == 1
    assert not any(isinstance(m, HILAPair) for m in plain.modules())
