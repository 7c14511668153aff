"""Tests of the synthetic ``hila_shapes`` dataset: generation, consistency, content, registration."""

import hashlib
import json
import os
import shutil
import time

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id

from hila_d2.data import shapes
from hila_d2.data.builtin import (
    ALL_CLASSES,
    HILA_SHAPES_DATASETS,
    STUFF_CLASSES,
    THING_CLASSES,
    hila_shapes_dataset_names,
    register_all_hila_shapes,
)

NUM_THINGS = len(THING_CLASSES)
SPLITS = list(shapes.SPLITS)


def _tree_digest(path):
    """sha256 over sorted relative paths and contents of every file under ``path``."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _read_rgb(path):
    return cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1]


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("d2root"))
    shapes.ensure_hila_shapes(root)
    return root


@pytest.fixture(scope="module")
def reference_digest(root):
    return _tree_digest(shapes.hila_shapes_dir(root))


@pytest.fixture(scope="module")
def scenes(root):
    """split -> list of dicts (image, sem, pan, stuff, segments, instances) read from disk."""
    base = shapes.hila_shapes_dir(root)
    out = {}
    for split in SPLITS:
        with open(os.path.join(base, "annotations", f"panoptic_{split}.json")) as f:
            pan_json = json.load(f)
        with open(os.path.join(base, "annotations", f"instances_{split}.json")) as f:
            inst_json = json.load(f)
        assert pan_json["images"] == inst_json["images"]
        instances = {}
        for ann in inst_json["annotations"]:
            instances.setdefault(ann["image_id"], []).append(ann)
        records = []
        for image, ann in zip(pan_json["images"], pan_json["annotations"]):
            assert (
                ann["image_id"] == image["id"]
                and ann["file_name"] == image["file_name"]
            )
            name = image["file_name"]
            records.append(
                {
                    "image_info": image,
                    "image": _read_rgb(os.path.join(base, "images", split, name)),
                    "sem": cv2.imread(
                        os.path.join(base, "sem_seg", split, name), cv2.IMREAD_UNCHANGED
                    ),
                    "pan": rgb2id(
                        _read_rgb(os.path.join(base, "panoptic", split, name))
                    ),
                    "stuff": cv2.imread(
                        os.path.join(base, "panoptic_stuff", split, name),
                        cv2.IMREAD_UNCHANGED,
                    ),
                    "segments": ann["segments_info"],
                    "instances": instances.get(image["id"], []),
                }
            )
        out[split] = {"records": records, "pan_json": pan_json, "inst_json": inst_json}
    return out


def test_manifest_and_json_headers(root, scenes):
    base = shapes.hila_shapes_dir(root)
    with open(os.path.join(base, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["generator_version"] == shapes.GENERATOR_VERSION
    assert manifest["thing_classes"] == THING_CLASSES
    assert manifest["stuff_classes"] == STUFF_CLASSES
    assert ALL_CLASSES == THING_CLASSES + STUFF_CLASSES
    for split, n in shapes.SPLITS.items():
        data = scenes[split]
        assert manifest["splits"][split] == {
            "images": n,
            "instances": len(data["inst_json"]["annotations"]),
        }
        assert [im["id"] for im in data["pan_json"]["images"]] == list(range(1, n + 1))
        assert data["pan_json"]["images"][0] == {
            "id": 1,
            "file_name": "000000.png",
            "height": 128,
            "width": 128,
        }
        cats = data["pan_json"]["categories"]
        assert [(c["id"], c["name"], c["isthing"]) for c in cats] == [
            (i + 1, name, int(i < NUM_THINGS)) for i, name in enumerate(ALL_CLASSES)
        ]
        assert all(len(c["color"]) == 3 for c in cats)
        assert data["inst_json"]["categories"] == cats[:NUM_THINGS]
        ann_ids = [a["id"] for a in data["inst_json"]["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)


@pytest.mark.parametrize("split", SPLITS)
def test_annotation_consistency(scenes, split):
    for rec in scenes[split]["records"]:
        image, sem, pan, stuff = rec["image"], rec["sem"], rec["pan"], rec["stuff"]
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert (
            sem.shape == stuff.shape == pan.shape == (128, 128)
            and sem.dtype == np.uint8
        )
        # semantic map == the one derived from panoptic PNG + segments_info (no void pixels)
        assert sorted(np.unique(pan)) == sorted(s["id"] for s in rec["segments"])
        derived = np.full_like(sem, 255)
        for seg in rec["segments"]:
            mask = pan == seg["id"]
            derived[mask] = seg["category_id"] - 1
            assert seg["area"] == mask.sum() and seg["bbox"] == _bbox(mask)
            assert seg["iscrowd"] == 0
        np.testing.assert_array_equal(sem, derived)
        # panoptic_stuff == semantic map with things collapsed to 0 and stuff shifted to 1..3
        np.testing.assert_array_equal(
            stuff, np.where(sem < NUM_THINGS, 0, sem - NUM_THINGS + 1)
        )
        # one COCO instance per thing segment, with exactly its pixels
        things = [s for s in rec["segments"] if s["category_id"] <= NUM_THINGS]
        assert len(rec["instances"]) == len(things)
        for ann in rec["instances"]:
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            seg_id = np.unique(pan[mask])
            assert len(seg_id) == 1
            seg = next(s for s in things if s["id"] == seg_id[0])
            np.testing.assert_array_equal(mask, pan == seg["id"])
            assert ann["category_id"] == seg["category_id"]
            assert ann["area"] == seg["area"] == mask_util.area(ann["segmentation"])
            assert (
                ann["bbox"]
                == seg["bbox"]
                == mask_util.toBbox(ann["segmentation"]).tolist()
            )
            assert ann["iscrowd"] == 0 and ann["area"] >= shapes.MIN_VISIBLE_AREA


def test_render_scene_matches_disk_and_is_order_independent(scenes):
    later = shapes.render_scene("val", 7)
    shapes.render_scene("train", 3)
    again = shapes.render_scene("val", 7)
    rec = scenes["val"]["records"][7]
    for key in ("image", "sem_seg", "panoptic"):
        np.testing.assert_array_equal(later[key], again[key])
    np.testing.assert_array_equal(later["image"], rec["image"])
    np.testing.assert_array_equal(later["panoptic"], rec["pan"])
    assert later["segments_info"] == rec["segments"]


@pytest.mark.parametrize("split", SPLITS)
def test_content(scenes, split):
    records = scenes[split]["records"]
    used = set(np.concatenate([np.unique(r["sem"]) for r in records]).tolist())
    assert used == set(range(len(ALL_CLASSES)))  # every class present, 255 never used

    counts = [len(r["instances"]) for r in records]
    assert min(counts) >= 2 and max(counts) <= 6 and np.mean(counts) > 3
    assert all(
        2 <= sum(s["category_id"] > NUM_THINGS for s in r["segments"]) <= 3
        for r in records
    )

    # occlusion happens: touching visible masks and intersecting boxes of distinct instances
    touching = intersecting = 0
    kernel = np.ones((3, 3), np.uint8)
    for r in records:
        masks = [mask_util.decode(a["segmentation"]) for a in r["instances"]]
        boxes = [a["bbox"] for a in r["instances"]]
        for i in range(len(masks)):
            grown = cv2.dilate(masks[i], kernel).astype(bool)
            for j in range(i + 1, len(masks)):
                touching += bool((grown & masks[j].astype(bool)).any())
                (x0, y0, w0, h0), (x1, y1, w1, h1) = boxes[i], boxes[j]
                intersecting += (
                    x0 < x1 + w1 and x1 < x0 + w0 and y0 < y1 + h1 and y1 < y0 + h0
                )
    assert touching >= len(records) // 4 and intersecting >= touching

    # sizes vary
    extents = [max(a["bbox"][2:]) for r in records for a in r["instances"]]
    assert min(extents) < 20 and max(extents) > 45

    # colours vary within a class and overlap across classes: colour alone is no cue
    colors = {c: [] for c in range(len(ALL_CLASSES))}
    for r in records:
        for seg in r["segments"]:
            colors[seg["category_id"] - 1].append(
                r["image"][r["pan"] == seg["id"]].mean(0)
            )
    means = []
    for c, values in colors.items():
        values = np.array(values)
        assert values.std(0).mean() > 25, ALL_CLASSES[c]
        means.append(values.mean(0))
    means = np.array(means)
    assert np.abs(means - means.mean(0)).max() < 50


def test_ensure_is_noop_when_current(root, reference_digest, monkeypatch):
    """A current dataset is returned as it is: nothing is generated, no file is rewritten and
    no temporary directory is left beside it."""

    def no_generation(out_dir):
        raise AssertionError(f"generated again into {out_dir}")

    monkeypatch.setattr(shapes, "generate_hila_shapes", no_generation)
    base = shapes.hila_shapes_dir(root)
    before = {
        p: os.stat(os.path.join(d, p)).st_mtime_ns
        for d, _, files in os.walk(base)
        for p in files
    }
    listing = sorted(os.listdir(root))
    assert shapes.ensure_hila_shapes(root) == base
    after = {
        p: os.stat(os.path.join(d, p)).st_mtime_ns
        for d, _, files in os.walk(base)
        for p in files
    }
    assert before == after and sorted(os.listdir(root)) == listing
    assert _tree_digest(base) == reference_digest


@pytest.mark.slow
def test_registration_is_lazy_idempotent_and_loads(
    tmp_path_factory, scenes, reference_digest
):
    assert set(HILA_SHAPES_DATASETS) <= set(
        DatasetCatalog.list()
    )  # import-time registration
    fresh = str(tmp_path_factory.mktemp("lazy_root"))
    names = register_all_hila_shapes(fresh, name_prefix="test_hila_shapes")
    assert names == hila_shapes_dataset_names("test_hila_shapes") and len(names) == 8
    assert register_all_hila_shapes(fresh, name_prefix="test_hila_shapes") == names
    assert os.listdir(fresh) == []  # registering never generates

    base = shapes.hila_shapes_dir(fresh)
    for split in SPLITS:
        n = shapes.SPLITS[split]
        prefix = f"test_hila_shapes_{split}"

        dicts = DatasetCatalog.get(f"{prefix}_sem_seg")  # generates on first load
        meta = MetadataCatalog.get(f"{prefix}_sem_seg")
        assert len(dicts) == n and set(dicts[0]) == {"file_name", "sem_seg_file_name"}
        assert dicts[0]["sem_seg_file_name"] == os.path.join(
            base, "sem_seg", split, "000000.png"
        )
        assert meta.stuff_classes == ALL_CLASSES and meta.thing_classes == THING_CLASSES
        assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
        assert len(meta.stuff_colors) == 7 and len(meta.thing_colors) == 4

        dicts = DatasetCatalog.get(prefix)
        meta = MetadataCatalog.get(prefix)
        assert len(dicts) == n and meta.evaluator_type == "coco"
        assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
        assert meta.json_file == os.path.join(
            base, "annotations", f"instances_{split}.json"
        )
        annos = [a for d in dicts for a in d["annotations"]]
        assert len(annos) == len(scenes[split]["inst_json"]["annotations"])
        assert {a["category_id"] for a in annos} == set(range(NUM_THINGS))
        assert {"bbox", "bbox_mode", "category_id", "segmentation", "iscrowd"} <= set(
            annos[0]
        )

        dicts = DatasetCatalog.get(f"{prefix}_panoptic")
        meta = MetadataCatalog.get(f"{prefix}_panoptic")
        assert len(dicts) == n and meta.evaluator_type == "coco_panoptic_seg"
        assert meta.label_divisor == 1000 and meta.ignore_label == 255
        assert meta.stuff_classes == ALL_CLASSES and meta.thing_classes == THING_CLASSES
        assert meta.stuff_dataset_id_to_contiguous_id == {5: 4, 6: 5, 7: 6}
        assert meta.panoptic_json == os.path.join(
            base, "annotations", f"panoptic_{split}.json"
        )
        assert meta.panoptic_root == os.path.join(base, "panoptic", split)
        assert {"file_name", "image_id", "pan_seg_file_name", "segments_info"} <= set(
            dicts[0]
        )
        for d in dicts:
            assert os.path.isfile(d["file_name"]) and os.path.isfile(
                d["pan_seg_file_name"]
            )
            for seg in d["segments_info"]:
                assert seg["isthing"] == (seg["category_id"] < NUM_THINGS)
                assert 0 <= seg["category_id"] < len(ALL_CLASSES)

        dicts = DatasetCatalog.get(f"{prefix}_panoptic_separated")
        meta = MetadataCatalog.get(f"{prefix}_panoptic_separated")
        assert len(dicts) == n and meta.evaluator_type == "coco_panoptic_seg"
        assert meta.stuff_classes == ["things"] + STUFF_CLASSES
        assert meta.stuff_dataset_id_to_contiguous_id == {0: 0, 5: 1, 6: 2, 7: 3}
        assert meta.sem_seg_root == os.path.join(base, "panoptic_stuff", split)
        for d in dicts:
            assert d["sem_seg_file_name"] == os.path.join(
                base, "panoptic_stuff", split, os.path.basename(d["file_name"])
            )
            assert d["annotations"]

    # the lazily generated copy is byte-identical to the fixture's
    assert _tree_digest(base) == reference_digest


@pytest.mark.slow
def test_ensure_repairs_interrupted_generation(tmp_path_factory, reference_digest):
    root = str(tmp_path_factory.mktemp("repair_root"))
    base = shapes.hila_shapes_dir(root)
    stale = os.path.join(root, ".hila_shapes.otherhost.1.tmp-dead")
    live = os.path.join(root, ".hila_shapes.otherhost.2.tmp-live")
    for d in (stale, live, os.path.join(base, "images", "train")):
        os.makedirs(d)
    old = time.time() - 2 * shapes.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    with open(os.path.join(base, "manifest.json"), "w") as f:
        json.dump({"generator_version": shapes.GENERATOR_VERSION - 1}, f)

    assert shapes.ensure_hila_shapes(root) == base
    assert _tree_digest(base) == reference_digest
    assert sorted(os.listdir(root)) == sorted(["hila_shapes", os.path.basename(live)])


def test_ensure_keeps_dataset_installed_concurrently(
    tmp_path_factory, root, monkeypatch
):
    other = str(tmp_path_factory.mktemp("race_root"))
    base = shapes.hila_shapes_dir(other)

    def racing_generate(out_dir):
        # another process finishes first while we are generating
        shutil.copytree(shapes.hila_shapes_dir(root), base)
        open(os.path.join(base, "theirs"), "w").close()
        os.makedirs(out_dir, exist_ok=True)

    monkeypatch.setattr(shapes, "generate_hila_shapes", racing_generate)
    assert shapes.ensure_hila_shapes(other) == base
    assert os.path.isfile(os.path.join(base, "theirs"))
    assert os.listdir(other) == ["hila_shapes"]
