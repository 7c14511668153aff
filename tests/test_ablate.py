"""tools/ablate.py: the table's statistics for known numbers, refusal of a run directory trained
with another config, finished runs skipped and interrupted ones resumed (the launcher replaced
by a stand-in), the docs tables against the committed records, and, slow, real train_net.py
runs that a rerun neither repeats nor restarts."""
import json
from pathlib import Path

import pytest
from project_config import REPO, load_script

ablate = load_script("tools/ablate.py")

PLAIN = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
HILA = "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"
HILA_S23 = ["MODEL.HILA.STAGES=[2,3]"]
MASK_RCNN = "configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml"
HILA_MASK_RCNN = "configs/builtin/instance-segmentation/hila_mask_rcnn_mit_b0_s3.yaml"


def plan(output_dir: Path, *variants, seeds=(1, 2, 3), opts=()):
    """The runs of ``variants`` (``(NAME, CONFIG, *overrides)``) under ``output_dir``."""
    parsed = [ablate.Variant.parse(words) for words in variants]
    return ablate.plan_runs(parsed, list(seeds), list(opts), 1.0, output_dir)


def write_finished(run, miou: float, mbf: float, seconds: float = 10.0, params: int = 3_720_000):
    """A record of ``run`` as if it had trained to these numbers."""
    record = run.new_record()
    record.update(finished=True, mIoU=miou, mBF=mbf, train_seconds=seconds, params=params)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    run.write_record(record)


def table_rows(output: str):
    """{variant: [cells]} of the Markdown table at the start of ``output``."""
    rows = [line.strip("|").split("|") for line in output.splitlines() if line.startswith("|")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[2:]}


def test_table_of_known_numbers(tmp_path, capsys):
    runs = plan(tmp_path, ("plain", PLAIN), ("hila", HILA), ("s23", HILA, *HILA_S23))
    numbers = {  # mIoU, mBF per seed; s23 finished one seed of three
        "plain": [(20, 40), (22, 41), (24, 42)],
        "hila": [(25, 41), (26, 42), (27, 40)],
        "s23": [(30, 50)],
    }
    for run in runs:
        seeds = numbers[run.variant.name]
        if run.seed <= len(seeds):
            write_finished(run, *seeds[run.seed - 1], seconds=10.0 * run.seed)
    ablate.main([
        "--output-dir", str(tmp_path), "--seeds", "1", "2", "3", "--table-only",
        "--variant", "plain", PLAIN, "--variant", "hila", HILA, "--variant", "s23", HILA, *HILA_S23,
    ])  # fmt: skip
    rows = table_rows(capsys.readouterr().out)
    # seeds, mIoU, mBF, Δ mIoU, > spread, Δ mBF, > spread, seconds, params (M)
    assert rows["plain"] == [
        "3/3", "22.00 ± 2.00", "41.00 ± 1.00", "baseline", "", "baseline", "", "20", "3.72",
    ]  # fmt: skip
    # |+4| > max(2, 1) exceeds the spread; a difference of 0 does not
    assert rows["hila"] == [
        "3/3", "26.00 ± 1.00", "41.00 ± 1.00", "+4.00", "yes", "+0.00", "no", "20", "3.72",
    ]  # fmt: skip
    assert rows["s23"] == ["1/3", "30.00", "50.00", "+8.00", "n/a", "+9.00", "n/a", "10", "3.72"]


def test_compare_exceeds_only_beyond_the_larger_std():
    assert ablate.compare([25, 26, 27], [20, 22, 24]) == (4.0, True)
    assert ablate.compare([23, 24, 25], [20, 22, 24]) == (2.0, False)  # |Δ| = 2 = max std
    assert ablate.compare([21], [20, 22, 24]) == (-1.0, None)
    assert ablate.compare([], [20, 22]) == (None, None)
    assert ablate.mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(1.2909944))


def test_schedule_scale_multiplies_the_solver_iterations(tmp_path):
    (run,) = plan(tmp_path, ("plain", PLAIN), seeds=(1,), opts=("SOLVER.STEPS", "(300, 400)"))
    assert ablate.scaled_schedule(run.cfg, 4) == [
        "SOLVER.MAX_ITER", "2000", "SOLVER.STEPS", "(1200, 1600)",
        "SOLVER.WARMUP_ITERS", "160", "SOLVER.HILA_WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "800",
    ]  # fmt: skip
    (warmup,) = plan(tmp_path, ("hila", HILA, "SOLVER.HILA_WARMUP_ITERS=50"), seeds=(1,))
    assert ablate.scaled_schedule(warmup.cfg, 4)[6:8] == ["SOLVER.HILA_WARMUP_ITERS", "200"]
    assert ablate.scaled_schedule(run.cfg, 1) == []
    with pytest.raises(ValueError, match="--schedule-scale must be > 0"):
        ablate.scaled_schedule(run.cfg, 0)


def test_run_directory_of_another_config_is_refused(tmp_path):
    (recorded,) = plan(tmp_path, ("hila", HILA), seeds=(1,))
    write_finished(recorded, 20, 40)
    (requested,) = plan(tmp_path, ("hila", HILA, *HILA_S23), seeds=(1,))
    stages_differ = r"MODEL\.HILA\.STAGES: recorded \[3\], requested \[2, 3\]"
    with pytest.raises(ValueError, match=stages_differ):
        requested.check_recorded_config(requested.load_record())
    (other_file,) = plan(tmp_path, ("hila", PLAIN, "MODEL.HILA.STAGES=[3]"), seeds=(1,))
    with pytest.raises(ValueError, match="config file: recorded .*hila_mit_b0_s3.yaml"):
        other_file.check_recorded_config(other_file.load_record())
    # without its record, the config.yaml that train_net.py wrote is compared
    recorded.record_path.unlink()
    (recorded.output_dir / "config.yaml").write_text(recorded.cfg.dump())
    recorded.check_recorded_config(None)
    with pytest.raises(ValueError, match=r"MODEL\.HILA\.STAGES"):
        requested.check_recorded_config(None)


def test_bad_variants_and_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        ablate.Variant.parse(["hila", HILA, "MODEL.HILA.STAGES"])
    with pytest.raises(ValueError, match="which ablate.py sets for each run"):
        ablate.Variant.parse(["hila", HILA, "SEED=3"])
    with pytest.raises(ValueError, match="does not exist"):
        ablate.Variant.parse(["hila", "configs/none.yaml"])
    with pytest.raises(ValueError, match="must be unique"):
        plan(tmp_path, ("a", PLAIN), ("a", HILA))
    with pytest.raises(ValueError, match="same one dataset"):
        plan(tmp_path, ("a", PLAIN), opts=("DATASETS.TEST", "('hila_shapes_val_sem_seg', 'b')"))
    with pytest.raises(ValueError, match="evaluator_type 'coco_panoptic_seg'"):
        plan(tmp_path, ("a", PLAIN), opts=("DATASETS.TEST", "('hila_shapes_val_panoptic',)"))
    with pytest.raises(ValueError, match="scored alike"):
        plan(tmp_path, ("a", MASK_RCNN), ("b", MASK_RCNN, "MODEL.MASK_ON=False"))


def test_detectors_are_compared_by_mask_and_box_ap(tmp_path, capsys):
    """A COCO test dataset scores runs by mask AP and box AP (records, table, notes)."""
    runs = plan(tmp_path, ("plain", MASK_RCNN), ("hila", HILA_MASK_RCNN), seeds=(1, 2))
    assert {run.scores for run in runs} == {(("mask AP", "segm/AP"), ("box AP", "bbox/AP"))}
    launcher = CountingLauncher()
    for run in runs:
        run.output_dir.mkdir(parents=True)
        launcher(run, False, print)
        record = run.new_record()
        scores = ablate.final_scores(run.output_dir, run.scores)
        record.update(finished=True, params=6_000_000, **scores)
        run.write_record(record)
    ablate.main([
        "--output-dir", str(tmp_path), "--seeds", "1", "2", "--table-only",
        "--variant", "plain", MASK_RCNN, "--variant", "hila", HILA_MASK_RCNN,
    ])  # fmt: skip
    output = capsys.readouterr().out
    assert "| Variant | Seeds done | mask AP | box AP | Δ mask AP |" in output
    assert table_rows(output)["hila"][:4] == ["2/2", "30.00 ± 0.00", "50.00 ± 0.00", "+0.00"]
    assert "Mask AP and box AP (COCO AP@[.5:.95]) in percent on hila_shapes_val" in output


def test_datasets_a_config_defines_are_scored_without_reading_them(tmp_path):
    """DATASETS.SEM_SEG_FOLDERS / COCO_JSONS test datasets (whose folders need not exist yet,
    e.g. before the built-in dataset is generated) are scored by their kind."""
    folders = [
        "DATASETS.SEM_SEG_FOLDERS.SPLITS", f"(('mine_val', '{tmp_path}/i', '{tmp_path}/l'),)",
        "DATASETS.SEM_SEG_FOLDERS.CLASSES", "('a', 'b', 'c', 'd', 'e', 'f', 'g')",
        "DATASETS.TEST", "('mine_val',)",
    ]  # fmt: skip
    (run,) = plan(tmp_path, ("plain", PLAIN), seeds=(1,), opts=folders)
    assert run.scores == ablate.SEM_SEG_SCORES
    coco = [
        "DATASETS.COCO_JSONS.SPLITS", f"(('mine_coco_val', '{tmp_path}/a.json', '{tmp_path}'),)",
        "DATASETS.TEST", "('mine_coco_val',)",
    ]  # fmt: skip
    (run,) = plan(tmp_path, ("plain", MASK_RCNN), seeds=(1,), opts=coco)
    assert run.scores == ablate.MASK_SCORES


class CountingLauncher:
    """Stands in for train_net.py: records (run, resume) and writes the metrics of a finished
    evaluation."""

    def __init__(self):
        self.launches = []

    def __call__(self, run, resume, progress):
        self.launches.append((run.name, resume))
        (_, first_key), (_, second_key) = run.scores
        metrics = {first_key: 30.0, second_key: 50.0, "iteration": 500}
        (run.output_dir / "metrics.json").write_text(json.dumps(metrics) + "\n")


def test_finished_runs_are_skipped_interrupted_ones_resumed(tmp_path, monkeypatch):
    runs = plan(tmp_path, ("plain", PLAIN))
    finished, interrupted, _ = runs
    write_finished(finished, 20, 40)
    record = interrupted.new_record()
    record["train_seconds"] = 100.0
    interrupted.output_dir.mkdir(parents=True)
    interrupted.write_record(record)
    (interrupted.output_dir / "last_checkpoint").write_text("model_0000199.pth")
    launcher = CountingLauncher()
    monkeypatch.setattr(ablate, "launch_train_net", launcher)

    ablate.train_all(runs)
    assert launcher.launches == [("plain/seed2", True), ("plain/seed3", False)]
    resumed = interrupted.load_record()
    assert resumed["finished"] and resumed["mIoU"] == 30.0 and resumed["mBF"] == 50.0
    assert resumed["train_seconds"] > 100.0  # the interrupted attempt's time is kept
    assert resumed["params"] == ablate.parameter_count(interrupted.cfg) > 3_000_000
    assert finished.load_record()["mIoU"] == 20  # not retrained

    ablate.train_all(runs)
    assert len(launcher.launches) == 2


@pytest.mark.slow
def test_rerun_trains_nothing_and_resumes_a_run_from_its_checkpoint(tmp_path, capsys, monkeypatch):
    """2 variants x 1 seed of 6 iterations (checkpoints at 2 and 5), evaluated at 32x32."""
    tiny = [
        "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "3",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "32",
    ]  # fmt: skip
    argv = [
        "--output-dir", str(tmp_path), "--seeds", "1",
        "--variant", "plain", PLAIN, "--variant", "hila", HILA, "--", *tiny,
    ]  # fmt: skip
    ablate.main(argv)
    table = capsys.readouterr().out
    paths = tmp_path.glob(f"*/*/{ablate.RECORD_FILE}")
    records = {path.parent: json.loads(path.read_text()) for path in paths}
    assert len(records) == 2
    for record in records.values():
        assert record["finished"] and record["iterations"] == 6 and record["train_seconds"] > 0
        assert 0 <= record["mIoU"] <= 100 and 0 <= record["mBF"] <= 100
    assert records[tmp_path / "hila/seed1"]["params"] > records[tmp_path / "plain/seed1"]["params"]
    assert table_rows(table)["hila"][0] == "1/1"

    def no_training(run, resume, progress):
        raise AssertionError(f"{run.name} was trained again")

    monkeypatch.setattr(ablate, "launch_train_net", no_training)
    ablate.main(argv)
    assert capsys.readouterr().out == table
    monkeypatch.undo()

    # a run whose record is lost and whose last checkpoint is iteration 2's resumes at 3
    run_dir = tmp_path / "hila/seed1"
    for name in (ablate.RECORD_FILE, "model_0000005.pth", "model_final.pth"):
        (run_dir / name).unlink()
    (run_dir / "last_checkpoint").write_text("model_0000002.pth")
    launches = []
    real_launcher = ablate.launch_train_net

    def recording_launcher(run, resume, progress):
        launches.append((run.name, resume))
        real_launcher(run, resume, progress)

    monkeypatch.setattr(ablate, "launch_train_net", recording_launcher)
    ablate.main(argv)
    assert launches == [("hila/seed1", True)]
    log = (run_dir / "log.txt").read_text()
    assert log.count("Starting training from iteration") == 2
    assert "Starting training from iteration 3" in log
    assert json.loads((run_dir / ablate.RECORD_FILE).read_text())["finished"]


B1 = ["MODEL.MIT.VARIANT=B1"]
WARMUP100 = "SOLVER.HILA_WARMUP_ITERS=100"
B1_LEVERS = [  # HILA S3 with one lever each, and S234
    ("mit_b1_s3_info1", HILA, *B1, "MODEL.HILA.INFO_WEIGHTS=[1.0,1.0]"),
    ("mit_b1_s3_clean", HILA, *B1, "MODEL.HILA.PARITY_MODE=False"),
    ("mit_b1_s3_warmup100", HILA, *B1, WARMUP100),
    ("mit_b1_s234", HILA, *B1, "MODEL.HILA.STAGES=[2,3,4]"),
]
SEM_SEG_CONFIGS = "configs/builtin/semantic-segmentation/"
THREE_SEEDS = (1, 2, 3)
# the paper's protocol: step 1's model (the path the records were trained with), fine-tuned
PRETRAINED = (
    "MODEL.WEIGHTS=output/ablation/protocol/pretrain_mit_b0_things_textures/seed1/model_final.pth"
)
NO_HILA_PRETRAINING = "MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE=True"
# The measured ablations whose records results/ablation/ keeps: (directory, schedule scale,
# seeds, variants, the first the baseline), as the tables of docs/HILA.md give them.
RECORDED_ABLATIONS = [
    ("b1_1x", 1.0, THREE_SEEDS, [("mit_b1", PLAIN, *B1), ("mit_b1_s3", HILA, *B1), *B1_LEVERS]),
    ("b1_1x", 1.0, THREE_SEEDS, [
        ("mit_b2", PLAIN, "MODEL.MIT.VARIANT=B2"), *B1_LEVERS[2:], ("mit_b1", PLAIN, *B1),
    ]),
    ("b0_4x", 4.0, THREE_SEEDS, [("mit_b0", PLAIN), ("mit_b0_s3", HILA)]),
    ("b1_4x", 4.0, THREE_SEEDS, [("mit_b1", PLAIN, *B1), ("mit_b1_s3", HILA, *B1), B1_LEVERS[2]]),
    ("timm_1x", 1.0, THREE_SEEDS, [
        ("convnext_atto", SEM_SEG_CONFIGS + "segformer_timm_convnext_atto.yaml"),
        ("convnext_atto_s3_warmup100",
         SEM_SEG_CONFIGS + "hila_segformer_timm_convnext_atto_s3.yaml", WARMUP100),
    ]),
    ("protocol", 1.0, (1,), [
        ("pretrain_mit_b0_things_textures",
         SEM_SEG_CONFIGS + "segformer_mit_b0_things_textures.yaml"),
    ]),
    ("protocol", 1.0, THREE_SEEDS, [
        ("finetuned_mit_b0", PLAIN, PRETRAINED),
        ("finetuned_mit_b0_s3", HILA, PRETRAINED, NO_HILA_PRETRAINING),
        ("finetuned_mit_b0_s3_warmup100", HILA, PRETRAINED, NO_HILA_PRETRAINING, WARMUP100),
    ]),
    ("mask_rcnn_2x", 2.0, THREE_SEEDS, [
        ("mask_rcnn_mit_b0", MASK_RCNN), ("mask_rcnn_mit_b0_s3", HILA_MASK_RCNN),
    ]),
    ("timm_1x", 1.0, THREE_SEEDS, [
        ("pvt_v2_b0", SEM_SEG_CONFIGS + "segformer_timm_pvt_v2_b0.yaml"),
        ("pvt_v2_b0_s3_warmup100",
         SEM_SEG_CONFIGS + "hila_segformer_timm_pvt_v2_b0_s3.yaml", WARMUP100),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(
    "directory,scale,seeds,variants",
    RECORDED_ABLATIONS,
    ids=[f"{a[0]}-{a[3][0][0]}" for a in RECORDED_ABLATIONS],
)
def test_docs_tables_are_those_of_the_recorded_runs(directory, scale, seeds, variants, capsys):
    """Each ablation table of docs/HILA.md is what ``--table-only`` prints from the committed
    records (the train-time column aside, which a docs table may leave out), and the records
    are of the configs the built-in recipe resolves to today."""
    argv = ["--table-only", "--seeds", *map(str, seeds), "--schedule-scale", str(scale)]
    argv += ["--output-dir", str(REPO / "results" / "ablation" / directory)]
    for words in variants:
        argv += ["--variant", *words]
    ablate.main(argv)
    rows = table_rows(capsys.readouterr().out)
    done = f"{len(seeds)}/{len(seeds)}"
    assert {name: cells[0] for name, cells in rows.items()} == {
        words[0]: done for words in variants
    }
    docs = (REPO / "docs" / "HILA.md").read_text()
    for name, cells in rows.items():
        row_start = " | ".join([name, *cells[:7]])
        assert f"| {row_start} |" in docs, f"docs/HILA.md lacks the {directory} row {row_start}"
