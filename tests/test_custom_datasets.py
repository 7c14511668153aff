"""One's own datasets without Python: hila_d2.data.register_sem_seg_folder / register_coco_json,
the config keys DATASETS.SEM_SEG_FOLDERS / COCO_JSONS (and the LazyConfig ``datasets`` node) that
train_net.py and lazyconfig_train_net.py register, the checks made at registration and by the
training mapper, and the Mapillary Vistas registration and prepare script.

The folders hold a few hila_shapes scenes (128x128 RGB images, 8-bit label PNGs of the 7 classes)
written under tmp_path. Two slow tests train a few iterations on such a folder through
train_net.py from a YAML file only, and through lazyconfig_train_net.py from overrides, and
evaluate with SemSegEvaluator."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.engine import default_argument_parser
from omegaconf import OmegaConf
from PIL import Image

import hila_d2
from hila_d2.config import add_datasets_config, hila_defaults
from hila_d2.data import (
    DatasetError,
    register_coco_json,
    register_datasets_from_config,
    register_datasets_from_lazy_config,
    register_sem_seg_folder,
    unregister_dataset,
)
from hila_d2.data.builtin import ALL_CLASSES
from hila_d2.data.mapillary_vistas import (
    MAPILLARY_VISTAS_CLASSES,
    register_all_mapillary_vistas,
    unregister_all_mapillary_vistas,
)
from hila_d2.data.mappers import CheckedDatasetMapper, build_train_mapper
from hila_d2.data.shapes import render_scene
from project_config import REPO, load_config, load_script, load_train_net

FOLDER_CONFIG = "configs/custom/semantic-segmentation/segformer_mit_b0_folder.yaml"
LAZY_SEGFORMER = "configs/lazy/builtin/semantic-segmentation/segformer_mit_b0.py"
MAPILLARY = "configs/mapillary-vistas/semantic-segmentation"
CITYSCAPES_HMSA = "configs/cityscapes/semantic-segmentation/hmsa/Base-HMSA-Cityscapes.yaml"


def write_folder(root: Path, count: int = 3, split: str = "val", image_ext: str = ".png",
                 sub: str = "", palette: bool = False) -> Path:  # fmt: skip
    """``count`` hila_shapes scenes as ``root/images/<sub>/NNN<image_ext>`` and
    ``root/labels/<sub>/NNN.png`` (8-bit gray, or palette PNGs with colours); returns root."""
    for index in range(count):
        scene = render_scene(split, index)
        for kind in ("images", "labels"):
            (root / kind / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene["image"]).save(root / "images" / sub / f"{index:03d}{image_ext}")
        label = Image.fromarray(scene["sem_seg"])
        if palette:
            label = label.convert("P")
            label.putpalette([v for i in range(256) for v in ((37 * i) % 256, 90, 255 - i)])
        label.save(root / "labels" / sub / f"{index:03d}.png")
    return root


@pytest.fixture
def names(request):
    """A function giving unique dataset names for this test; they are unregistered afterwards."""
    given = []
    stem = re.sub(r"\W", "_", request.node.name)

    def name(suffix: str = "") -> str:
        given.append(f"test_custom_{stem}_{len(given)}{suffix}")
        return given[-1]

    yield name
    for dataset in given:
        unregister_dataset(dataset)


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "data")


def register(name, root: Path, classes=ALL_CLASSES, **kwargs):
    register_sem_seg_folder(name, root / "images", root / "labels", classes, **kwargs)


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(DatasetError) as caught:
        call(*args, **kwargs)
    assert isinstance(caught.value, ValueError)
    return str(caught.value)


# ---------------------------------------------------------------- semantic segmentation folders


def test_records_and_metadata_are_those_of_a_builtin_semantic_dataset(folder, names):
    name = names()
    register(name, folder)
    expected = [
        {
            "file_name": str(folder / "images" / f"{i:03d}.png"),
            "sem_seg_file_name": str(folder / "labels" / f"{i:03d}.png"),
            "height": 128,
            "width": 128,
        }
        for i in range(3)
    ]
    assert DatasetCatalog.get(name) == expected
    DatasetCatalog.get(name)[0]["file_name"] = "changed"  # callers get copies
    assert DatasetCatalog.get(name) == expected
    metadata = MetadataCatalog.get(name)
    assert metadata.stuff_classes == ALL_CLASSES and metadata.ignore_label == 255
    assert metadata.evaluator_type == "sem_seg"
    assert metadata.image_root == str(folder / "images")
    assert metadata.sem_seg_root == str(folder / "labels")


def test_nested_folders_other_image_types_and_relative_paths(tmp_path, names, monkeypatch):
    root = write_folder(tmp_path / "data", count=2, image_ext=".jpg", sub="city/a")
    write_folder(root, count=1, image_ext=".BMP", sub="b")
    (root / "images" / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    name = names()
    register_sem_seg_folder(name, "data/images", "data/labels", ALL_CLASSES)
    records = DatasetCatalog.get(name)
    assert [Path(r["file_name"]).relative_to(root / "images").as_posix() for r in records] == [
        "b/000.BMP", "city/a/000.jpg", "city/a/001.jpg",
    ]  # fmt: skip
    for record in records:
        stem = record["file_name"].replace("images", "labels").rsplit(".", 1)[0]
        assert record["sem_seg_file_name"] == stem + ".png"


def test_registering_again_is_a_no_op_and_another_definition_an_error(folder, tmp_path, names):
    name = names()
    register(name, folder)
    register(name, folder)  # the same arguments: fine
    other = write_folder(tmp_path / "other", count=1)
    message = error_of(register, name, other)
    assert f"{name!r} is already registered with another definition" in message
    assert "another name" in message
    message = error_of(register, "hila_shapes_val_sem_seg", folder)
    assert (
        "'hila_shapes_val_sem_seg' is already registered in detectron2's DatasetCatalog" in message
    )


def test_images_without_labels_and_labels_without_images_are_listed(folder, names):
    (folder / "labels" / "001.png").unlink()
    (folder / "labels" / "002.png").rename(folder / "labels" / "002_mask.png")
    name = names()
    message = error_of(register, name, folder)
    assert f"The dataset {name!r}" in message and "cannot be registered" in message
    assert "2 images have no label PNG of the same base name" in message
    assert "001.png, 002.png" in message and "labels/001.png" in message  # the file to add
    assert "1 label has no image of the same base name" in message
    assert "002_mask.png; add the images or remove those labels" in message
    assert name not in DatasetCatalog  # nothing was registered


def test_size_mismatch_names_both_files_and_sizes(folder, names):
    label = Image.open(folder / "labels" / "001.png")
    label.resize((100, 128), Image.NEAREST).save(folder / "labels" / "001.png")
    message = error_of(register, names(), folder)
    assert "1 label differs in size from their image" in message
    assert "001.png 128x128 / 001.png 100x128" in message
    assert "nearest-neighbour" in message


def test_out_of_range_label_values_name_the_file_and_the_fix(folder, names):
    label = np.asarray(Image.open(folder / "labels" / "002.png")).copy()
    label[:3, :3] = 9
    label[5, 5] = 255  # the ignore value is allowed
    Image.fromarray(label).save(folder / "labels" / "002.png")
    message = error_of(register, names(), folder)
    assert (
        "1 label has values that are no class (0..6) and not the ignore value 255: 002.png [9];"
        in message
    )
    assert "add the missing classes" in message
    # with five classes, 5 and 6 are out of range too: every label is named with its values
    message = error_of(register, names(), folder, classes=ALL_CLASSES[:5])
    assert "3 labels have values that are no class (0..4)" in message
    assert "002.png [6, 9]" in message


def test_missing_directories_and_empty_folders(tmp_path, folder, names):
    message = error_of(
        register_sem_seg_folder, names(), tmp_path / "nope", folder / "labels", ALL_CLASSES
    )
    assert f"the image folder {tmp_path / 'nope'} does not exist: check the path" in message
    (tmp_path / "empty").mkdir()
    message = error_of(
        register_sem_seg_folder, names(), tmp_path / "empty", folder / "labels", ALL_CLASSES
    )
    assert f"the image folder {tmp_path / 'empty'} holds no image" in message
    jpeg_labels = tmp_path / "jpeg_labels"
    jpeg_labels.mkdir()
    Image.new("L", (8, 8)).save(jpeg_labels / "000.jpg")
    message = error_of(
        register_sem_seg_folder, names(), folder / "images", jpeg_labels, ALL_CLASSES
    )
    assert (
        "holds no .png label (it holds 1 other image file: labels must be lossless PNG)" in message
    )


def test_colour_labels_and_bad_classes_are_refused(folder, names):
    Image.new("RGB", (128, 128)).save(folder / "labels" / "000.png")
    message = error_of(register, names(), folder)
    assert "000.png (RGB)" in message and "is a colour image, not class ids" in message
    assert "classes is empty" in error_of(register, names(), folder, classes=[])
    assert "'a'] are repeated" in error_of(register, names(), folder, classes=["a", "a"])
    assert "is the id of the class 'b'" in error_of(
        register, names(), folder, classes=["a", "b"], ignore_label=1
    )


def test_palette_labels_are_read_as_class_ids(tmp_path, names):
    """detectron2's DatasetMapper turns palette colours into gray levels; hila_d2's mapper reads
    the indices, as SemSegEvaluator does."""
    root = write_folder(tmp_path / "data", count=1, palette=True)
    name = names()
    register(name, root)
    record = DatasetCatalog.get(name)[0]
    truth = render_scene("val", 0)["sem_seg"]
    cfg = load_config(
        "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml",
        *("INPUT.RESIZE_RATIO_RANGE", "(1.0, 1.0)", "INPUT.CROP.ENABLED", "False"),
    )
    checked = build_train_mapper(cfg)
    assert (
        type(checked) is CheckedDatasetMapper
        and vars(checked).keys() == vars(DatasetMapper(cfg)).keys()
    )
    np.random.seed(0)
    ours = checked(dict(record))["sem_seg"].numpy()
    assert np.array_equal(ours, truth) or np.array_equal(ours, truth[:, ::-1])  # random flip
    stock = DatasetMapper(cfg, is_train=False)(dict(record))["sem_seg"].numpy()
    assert not np.array_equal(stock, truth)


def test_the_mapper_names_the_files_of_labels_changed_after_registration(folder, names):
    name = names()
    register(name, folder)
    records = DatasetCatalog.get(name)
    mapper = build_train_mapper(
        load_config("configs/builtin/semantic-segmentation/segformer_mit_b0.yaml")
    )
    mapper(dict(records[0]))
    Image.new("L", (64, 128)).save(folder / "labels" / "000.png")
    with pytest.raises(
        DatasetError, match=r"The label .*000\.png is 64x128 .* but its image .*000\.png is 128x128"
    ):
        mapper(dict(records[0]))
    Image.new("L", (128, 128), color=7).save(folder / "labels" / "001.png")
    with pytest.raises(
        DatasetError, match=rf"label .*001\.png .* of the dataset '{name}' has the values \[7\]"
    ):
        mapper(dict(records[1]))


def test_the_mapper_takes_its_label_folders_to_spawned_workers(folder, names):
    import pickle

    from hila_d2.data import dataset_files

    name = names()
    register(name, folder)
    mapper = build_train_mapper(
        load_config("configs/builtin/semantic-segmentation/segformer_mit_b0.yaml")
    )
    state = pickle.dumps(mapper)
    key = str(folder / "labels")
    saved = dataset_files._LABEL_FOLDERS.pop(key)
    try:
        copy = pickle.loads(state)
        assert (
            dataset_files._LABEL_FOLDERS[key] == saved and vars(copy).keys() == vars(mapper).keys()
        )
    finally:
        dataset_files._LABEL_FOLDERS[key] = saved


def test_lazy_registration_checks_when_loaded(tmp_path, names):
    name = names()
    register_sem_seg_folder(name, tmp_path / "absent" / "images", tmp_path / "absent" / "labels",
                            ALL_CLASSES, lazy=True)  # fmt: skip
    assert MetadataCatalog.get(name).evaluator_type == "sem_seg"
    with pytest.raises(DatasetError, match=rf"'{name}' .* cannot be loaded:\n- the image folder"):
        DatasetCatalog.get(name)


# ---------------------------------------------------------------- COCO JSON


def coco_dataset(root: Path, **changes) -> Path:
    """Two 128x128 images of hila_shapes with one polygon and one RLE annotation each, categories
    3 and 7 (non-contiguous ids); ``changes`` replace top-level entries."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(2):
        Image.fromarray(render_scene("val", index)["image"]).save(root / "images" / f"{index}.jpg")
        images.append({"id": index + 1, "file_name": f"{index}.jpg", "width": 128, "height": 128})
        square = np.zeros((128, 128), np.uint8, order="F")
        square[40:80, 30:90] = 1
        rle = mask_util.encode(square)
        rle["counts"] = rle["counts"].decode()
        annotations += [
            {"id": 2 * index + 1, "image_id": index + 1, "category_id": 3, "iscrowd": 0,
             "bbox": [10, 10, 20, 20], "area": 400,
             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
            {"id": 2 * index + 2, "image_id": index + 1, "category_id": 7, "iscrowd": 0,
             "bbox": [30, 40, 60, 40], "area": 2400, "segmentation": rle},
        ]  # fmt: skip
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 7, "name": "star"}, {"id": 3, "name": "circle"}],
        **changes,
    }
    (root / "train.json").write_text(json.dumps(data))
    return root


def test_coco_json_registers_and_loads(tmp_path, names):
    root = coco_dataset(tmp_path / "coco")
    name = names()
    register_coco_json(name, root / "train.json", root / "images")
    register_coco_json(name, root / "train.json", root / "images")  # again: a no-op
    records = DatasetCatalog.get(name)
    assert [r["file_name"] for r in records] == [str(root / "images" / f"{i}.jpg") for i in (0, 1)]
    assert [len(r["annotations"]) for r in records] == [2, 2]
    assert [a["category_id"] for a in records[0]["annotations"]] == [0, 1]  # ids 3, 7 -> 0, 1
    assert isinstance(records[0]["annotations"][1]["segmentation"], dict)  # RLE kept
    metadata = MetadataCatalog.get(name)
    assert metadata.thing_classes == ["circle", "star"] and metadata.evaluator_type == "coco"
    assert metadata.json_file == str(root / "train.json")


def test_coco_json_errors_name_the_files_and_the_fix(tmp_path, names):
    root = coco_dataset(tmp_path / "coco")
    data = json.loads((root / "train.json").read_text())

    def error_for(**changes):
        coco_dataset(root, **changes)
        return error_of(register_coco_json, names(), root / "train.json", root / "images")

    prefixed = [dict(image, file_name=f"upload/1/{image['file_name']}") for image in data["images"]]
    message = error_for(images=prefixed)
    assert "2 images do not exist under the image root" in message
    assert (
        "upload/1/0.jpg, upload/1/1.jpg" in message and "carry a folder prefix: strip it" in message
    )
    message = error_for(annotations=[dict(data["annotations"][0], category_id=5)])
    assert "names a category id that 'categories' lacks (it has [3, 7])" in message
    assert "annotation 1 of 0.jpg (category_id 5)" in message
    message = error_for(annotations=[dict(data["annotations"][0], image_id=9)])
    assert "annotation 1 (image_id 9)" in message and "'images' lacks" in message
    message = error_for(images=[dict(data["images"][0], width=100), data["images"][1]])
    assert "0.jpg 128x128 (JSON: 100x128)" in message
    (root / "train.json").write_text("{not json")
    assert "is not valid JSON" in error_of(
        register_coco_json, names(), root / "train.json", root / "images"
    )
    message = error_of(register_coco_json, names(), root / "absent.json", root / "images")
    assert "absent.json does not exist" in message


# ---------------------------------------------------------------- config keys


def folder_opts(root: Path, train: str, val: str, classes=ALL_CLASSES):
    """Command-line overrides of FOLDER_CONFIG for the folder ``root`` (train and val on it)."""
    splits = (
        (train, str(root / "images"), str(root / "labels")),
        (val, str(root / "images"), str(root / "labels")),
    )
    return [
        "DATASETS.SEM_SEG_FOLDERS.SPLITS", repr(splits),
        "DATASETS.SEM_SEG_FOLDERS.CLASSES", repr(tuple(classes)),
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(len(classes)),
        "DATASETS.TRAIN", repr((train,)), "DATASETS.TEST", repr((val,)),
    ]  # fmt: skip


def test_the_keys_are_a_config_part():
    defaults = hila_defaults().DATASETS
    assert defaults.SEM_SEG_FOLDERS.SPLITS == () and defaults.SEM_SEG_FOLDERS.CLASSES == ()
    assert defaults.SEM_SEG_FOLDERS.IGNORE_LABEL == 255 and defaults.COCO_JSONS.SPLITS == ()
    assert add_datasets_config in hila_d2.config.CONFIG_PARTS


def test_train_net_registers_the_folders_of_a_yaml_config(folder, names, tmp_path):
    train, val = names(), names()
    args = default_argument_parser().parse_args(
        ["--config-file", str(REPO / FOLDER_CONFIG), *folder_opts(folder, train, val),
         "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")]
    )  # fmt: skip
    cfg = load_train_net().setup(args)
    assert (
        DatasetCatalog.get(train) == DatasetCatalog.get(val) and len(DatasetCatalog.get(val)) == 3
    )
    assert MetadataCatalog.get(val).stuff_classes == ALL_CLASSES
    evaluator = load_train_net().Trainer.build_evaluator(cfg, val)
    assert type(evaluator).__name__ == "SemSegEvaluator"
    assert register_datasets_from_config(cfg) == [train, val]  # again: nothing changes


def test_a_yaml_file_with_lists_registers_too(folder, names, tmp_path):
    train = names()
    config = tmp_path / "mine.yaml"
    config.write_text(
        f'_BASE_: "{REPO / FOLDER_CONFIG}"\n'
        "MODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSES: 2\n"
        f'DATASETS:\n  TRAIN: ["{train}"]\n  SEM_SEG_FOLDERS:\n'
        f'    SPLITS: [["{train}", "{folder / "images"}", "{folder / "labels"}"]]\n'
        '    CLASSES: ["a", "b"]\n'
    )
    cfg = hila_d2.load_config(str(config))
    hila_d2.validate_config(cfg)
    assert cfg.DATASETS.SEM_SEG_FOLDERS.SPLITS == (
        [train, str(folder / "images"), str(folder / "labels")],
    )
    message = error_of(register_datasets_from_config, cfg)  # 2 classes: the labels have 0..6
    assert "have values that are no class (0..1)" in message and "000.png [3, 4, 5, 6]" in message


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"],
         r"DATASETS\.SEM_SEG_FOLDERS\.CLASSES names 7 classes but MODEL\.SEM_SEG_HEAD\.NUM_CLASSES is 5: .*set MODEL\.SEM_SEG_HEAD\.NUM_CLASSES to 7"),
        (["MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "0"],
         r"DATASETS\.SEM_SEG_FOLDERS\.IGNORE_LABEL is 255 but MODEL\.SEM_SEG_HEAD\.IGNORE_VALUE is 0"),
        (["DATASETS.SEM_SEG_FOLDERS.SPLITS", "(('a', 'x'),)"],
         r"DATASETS\.SEM_SEG_FOLDERS\.SPLITS must be a list of \(name, image_dir, label_dir\) triples"),
        (["DATASETS.SEM_SEG_FOLDERS.CLASSES", "()"],
         r"DATASETS\.SEM_SEG_FOLDERS\.CLASSES must list the class names"),
        (["DATASETS.COCO_JSONS.SPLITS", "(('my_train', 'a.json', 'img'),)"],
         r"The dataset names \['my_train'\] are given twice"),
    ],
    ids=["num-classes", "ignore", "splits", "classes", "twice"],
)  # fmt: skip
def test_bad_dataset_keys_are_one_error_from_validate_config(folder, opts, message):
    cfg = load_config(FOLDER_CONFIG, *folder_opts(folder, "my_train", "my_val")[:6], *opts)
    with pytest.raises(DatasetError, match=message):
        hila_d2.validate_config(cfg)


def test_one_split_without_its_trailing_comma_is_read(folder, names):
    train = names()
    cfg = load_config(
        FOLDER_CONFIG,
        "DATASETS.SEM_SEG_FOLDERS.SPLITS", f"(('{train}', '{folder / 'images'}', '{folder / 'labels'}'))",
        "DATASETS.SEM_SEG_FOLDERS.CLASSES", repr(tuple(ALL_CLASSES)), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7",
    )  # fmt: skip
    assert register_datasets_from_config(cfg) == [train]


def test_coco_keys_check_the_detector_class_count_and_mask_format(tmp_path, names):
    root = coco_dataset(tmp_path / "coco")
    train = names()
    split = repr(((train, str(root / "train.json"), str(root / "images")),))
    config = "configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml"
    opts = ["DATASETS.COCO_JSONS.SPLITS", split, "DATASETS.TRAIN", repr((train,))]
    cfg = load_config(config, *opts, "MODEL.ROI_HEADS.NUM_CLASSES", "4")
    with pytest.raises(
        DatasetError,
        match=r"2 categories \['circle', 'star'\] but MODEL\.ROI_HEADS\.NUM_CLASSES is 4",
    ):
        register_datasets_from_config(cfg)
    cfg = load_config(
        config, *opts, "MODEL.ROI_HEADS.NUM_CLASSES", "2", "INPUT.MASK_FORMAT", "polygon"
    )
    with pytest.raises(DatasetError, match=r"has RLE masks.*set INPUT\.MASK_FORMAT to 'bitmask'"):
        register_datasets_from_config(cfg)
    cfg = load_config(
        config, *opts, "MODEL.ROI_HEADS.NUM_CLASSES", "2", "INPUT.MASK_FORMAT", "bitmask"
    )
    assert register_datasets_from_config(cfg) == [train]


def test_lazy_config_datasets_node_and_overrides(folder, names):
    train, val = names(), names()
    cfg = LazyConfig.load(str(REPO / LAZY_SEGFORMER))
    overrides = [
        f'datasets.sem_seg_folders.splits=[["{train}","{folder / "images"}","{folder / "labels"}"],'
        f'["{val}","{folder / "images"}","{folder / "labels"}"]]',
        f"datasets.sem_seg_folders.classes=[{','.join(ALL_CLASSES)}]",
        f"dataloader.train.dataset.names={train}",
        f"dataloader.test.dataset.names={val}",
    ]
    cfg = LazyConfig.apply_overrides(cfg, overrides)
    assert register_datasets_from_lazy_config(cfg) == [train, val]
    assert len(DatasetCatalog.get(train)) == 3
    bad = LazyConfig.apply_overrides(cfg, ["model.sem_seg_head.num_classes=3"])
    with pytest.raises(
        DatasetError,
        match=r"datasets\.sem_seg_folders\.classes names 7 classes but model\.sem_seg_head\.num_classes is 3",
    ):
        register_datasets_from_lazy_config(bad)
    cfg.datasets = OmegaConf.create({"sem_seg_folders": {"splits": [], "clases": []}})
    with pytest.raises(DatasetError, match=r"Unknown keys \['clases'\]"):
        register_datasets_from_lazy_config(cfg)


def test_lazy_config_with_palette_labels_needs_the_class_id_mapper(tmp_path, names):
    root = write_folder(tmp_path / "data", count=1, palette=True)
    train = names()
    overrides = [
        f'datasets.sem_seg_folders.splits=[["{train}","{root / "images"}","{root / "labels"}"]]',
        f"datasets.sem_seg_folders.classes=[{','.join(ALL_CLASSES)}]",
        f"dataloader.train.dataset.names={train}",
    ]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(REPO / LAZY_SEGFORMER)), overrides)
    with pytest.raises(
        DatasetError,
        match=r"dataloader\.train\.mapper\._target_=hila_d2\.data\.mappers\.CheckedDatasetMapper",
    ):
        register_datasets_from_lazy_config(cfg)
    fixed = LazyConfig.apply_overrides(
        cfg, ["dataloader.train.mapper._target_=hila_d2.data.mappers.CheckedDatasetMapper"]
    )
    assert register_datasets_from_lazy_config(fixed) == [train]


# ---------------------------------------------------------------- Mapillary Vistas


def fake_mapillary(root: Path, v2_layout: bool = False) -> Path:
    """A Mapillary Vistas v1.2 tree with 2 training and 1 validation image (jpg, 96x64) and
    palette labels using ids 0, 13, 64 and 65 ("Unlabeled")."""
    base = root / "mapillary_vistas"
    labels = [{"name": f"class--{i}", "readable": n, "color": [i, 2 * i, 3 * i]}
              for i, n in enumerate(MAPILLARY_VISTAS_CLASSES)]  # fmt: skip
    labels.append({"name": "void--unlabeled", "readable": "Unlabeled", "color": [0, 0, 0]})
    base.mkdir(parents=True)
    (base / ("config_v1.2.json" if v2_layout else "config.json")).write_text(
        json.dumps({"labels": labels})
    )
    palette = [c for label in labels for c in label["color"]]
    for split, count in (("training", 2), ("validation", 1)):
        images = base / split / "images"
        label_dir = base / split / ("v1.2/labels" if v2_layout else "labels")
        images.mkdir(parents=True)
        label_dir.mkdir(parents=True)
        for index in range(count):
            name = f"{split[0]}{index:04d}"
            Image.fromarray(np.full((64, 96, 3), 100 + index, np.uint8)).save(
                images / f"{name}.jpg"
            )
            ids = np.zeros((64, 96), np.uint8)
            ids[:, 30:60], ids[:, 60:90], ids[:, 90:] = 13, 64, 65
            label = Image.fromarray(ids).convert("P")
            label.putpalette(palette)
            label.save(label_dir / f"{name}.png")
    return base


@pytest.mark.parametrize("v2_layout", [False, True], ids=["v1.2", "v2.0-download"])
def test_mapillary_prepare_and_registration(tmp_path, v2_layout):
    base = fake_mapillary(tmp_path, v2_layout)
    prefix = f"test_mapillary_{int(v2_layout)}"
    try:
        names = register_all_mapillary_vistas(str(tmp_path), name_prefix=prefix)
        assert names == [f"{prefix}_train", f"{prefix}_val"]
        with pytest.raises(
            DatasetError,
            match=r"labels_detectron2 does not exist: run python datasets/prepare_mapillary_vistas_sem_seg\.py",
        ):
            DatasetCatalog.get(names[0])
        load_script("datasets/prepare_mapillary_vistas_sem_seg.py").main(
            ["--root", str(tmp_path), "--workers", "1"]
        )
        converted = np.asarray(Image.open(base / "training" / "labels_detectron2" / "t0001.png"))
        assert converted.dtype == np.uint8 and sorted(np.unique(converted)) == [0, 13, 64, 255]
        records = DatasetCatalog.get(names[0])
        assert [Path(r["file_name"]).name for r in records] == ["t0000.jpg", "t0001.jpg"]
        assert records[0]["sem_seg_file_name"] == str(
            base / "training" / "labels_detectron2" / "t0000.png"
        )
        assert (records[0]["height"], records[0]["width"]) == (64, 96)
        metadata = MetadataCatalog.get(names[1])
        DatasetCatalog.get(names[1])
        assert len(metadata.stuff_classes) == 65 and metadata.stuff_classes[-1] == "Ego Vehicle"
        assert metadata.ignore_label == 255 and metadata.evaluator_type == "sem_seg"
        assert metadata.stuff_colors[13] == [13, 26, 39]
        assert register_all_mapillary_vistas(str(tmp_path), name_prefix=prefix) == names
    finally:
        unregister_all_mapillary_vistas(prefix)


def test_mapillary_prepare_refuses_another_version(tmp_path):
    base = fake_mapillary(tmp_path)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({"labels": config["labels"] * 2}))
    with pytest.raises(SystemExit, match="lists 132 labels"):
        load_script("datasets/prepare_mapillary_vistas_sem_seg.py").main(["--root", str(tmp_path)])


def test_builtin_mapillary_datasets_are_registered():
    for split in ("train", "val"):
        metadata = MetadataCatalog.get(f"mapillary_vistas_sem_seg_{split}")
        assert len(metadata.stuff_classes) == 65 and metadata.evaluator_type == "sem_seg"


def test_mapillary_hmsa_configs_mirror_the_cityscapes_hmsa_recipe():
    cityscapes_keys = set(hila_d2.load_config(str(REPO / CITYSCAPES_HMSA)).MODEL.HMSA)
    for variant in ("b1", "b2"):
        plain = load_config(f"{MAPILLARY}/segformer_mit_{variant}_bs16_160k.yaml")
        hmsa = load_config(f"{MAPILLARY}/hmsa/hmsa_segformer_mit_{variant}_bs16_160k.yaml")
        hila_d2.validate_config(hmsa)
        assert set(hmsa.MODEL.HMSA) == cityscapes_keys
        assert hmsa.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 65 and hmsa.DATASETS.TRAIN == (
            "mapillary_vistas_sem_seg_train",
        )
        assert hmsa.MODEL.HMSA.TEST_SCALES == (0.25, 0.5, 1.0, 2.0) and hmsa.MODEL.HMSA.TEST_FLIP
        assert hmsa.MODEL.HMSA.SCALE_LOSS_WEIGHT == 0.0
        assert tuple(hmsa.INPUT.CROP.SIZE) == (1024, 1024) and hmsa.INPUT.RESIZE_BASE_SIZE == (
            2177,
            2177,
        )
        # HMSA changes the meta-architecture and its own keys only
        plain.merge_from_list(["MODEL.META_ARCHITECTURE", "HierarchicalMultiScaleSegmentor"])
        plain.MODEL.HMSA = hmsa.MODEL.HMSA
        assert plain == hmsa


# ---------------------------------------------------------------- end to end (slow)


def write_split_folders(root: Path) -> Path:
    """hila_shapes train scenes 0-7 (palette labels, as many tools write them) and val scenes
    0-3 (8-bit gray labels) as train/ and val/ folders."""
    write_folder(root / "train", count=8, split="train", image_ext=".jpg", palette=True)
    write_folder(root / "val", count=4, split="val")
    return root


@pytest.mark.slow
def test_train_net_trains_and_evaluates_a_folder_dataset_from_yaml_only(train_net, tmp_path):
    """A YAML file over the example config names the folders; train_net.py registers them,
    trains 4 iterations on CPU and scores the val folder with SemSegEvaluator."""
    data = write_split_folders(tmp_path / "data")
    config = tmp_path / "my_folder.yaml"
    config.write_text(f"""_BASE_: "{REPO / FOLDER_CONFIG}"
MODEL:
  DEVICE: "cpu"
  MIT:
    DROP_PATH_RATE: 0.0
  SEM_SEG_HEAD:
    NUM_CLASSES: 7
DATASETS:
  TRAIN: ("shapes_folder_train",)
  TEST: ("shapes_folder_val",)
  SEM_SEG_FOLDERS:
    SPLITS: [["shapes_folder_train", "{data}/train/images", "{data}/train/labels"], ["shapes_folder_val", "{data}/val/images", "{data}/val/labels"]]
    CLASSES: {json.dumps(ALL_CLASSES)}
INPUT:
  RESIZE_BASE_SIZE: (512, 128)
  RESIZE_RATIO_RANGE: (1.0, 1.0)
  PHOTOMETRIC_DISTORTION: False
  CROP:
    SIZE: (96, 96)
  MIN_SIZE_TEST: 128
  MAX_SIZE_TEST: 512
SOLVER:
  IMS_PER_BATCH: 2
  MAX_ITER: 4
  WARMUP_ITERS: 1
  CHECKPOINT_PERIOD: 1000
TEST:
  EVAL_PERIOD: 0
DATALOADER:
  NUM_WORKERS: 1
""")
    run = train_net(str(config))
    assert (
        "Registered and checked the datasets ['shapes_folder_train', 'shapes_folder_val']"
        in run.log
    )
    assert 0.0 <= run.final_metrics["sem_seg/mIoU"] <= 100.0
    assert {"sem_seg/fwIoU", "sem_seg/mACC", "sem_seg/pACC"} <= set(run.final_metrics)
    assert max(run.losses()) == 3 and all(np.isfinite(list(run.losses().values())))
    assert (run.output_dir / "inference" / "sem_seg_evaluation.pth").is_file()


@pytest.mark.slow
def test_lazyconfig_train_net_trains_and_evaluates_a_folder_dataset(train_net, tmp_path):
    """The same through lazyconfig_train_net.py, by command-line overrides of the built-in lazy
    SegFormer config: 2 iterations, then SemSegEvaluator on the val folder."""
    data = write_split_folders(tmp_path / "data")
    run = train_net(
        LAZY_SEGFORMER,
        f'datasets.sem_seg_folders.splits=[["lazy_folder_train","{data}/train/images","{data}/train/labels"],'
        f'["lazy_folder_val","{data}/val/images","{data}/val/labels"]]',
        f"datasets.sem_seg_folders.classes=[{','.join(ALL_CLASSES)}]",
        "dataloader.train.dataset.names=lazy_folder_train",
        "dataloader.test.dataset.names=lazy_folder_val",
        "dataloader.train.mapper._target_=hila_d2.data.mappers.CheckedDatasetMapper",
        "dataloader.train.total_batch_size=2",
        "train.max_iter=2",
        "train.device=cpu",
    )
    assert "Registered and checked the datasets ['lazy_folder_train', 'lazy_folder_val']" in run.log
    assert 0.0 <= run.final_metrics["sem_seg/mIoU"] <= 100.0
    assert os.path.isfile(run.output_dir / "model_final.pth")
