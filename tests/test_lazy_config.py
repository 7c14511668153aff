"""The LazyConfig (Python) configs under configs/lazy/ against their YAML twins, and
lazyconfig_train_net.py on the built-in dataset.

Each lazy config loads and instantiates; built from the same seed it gives the YAML twin's model
(the same parameter names, shapes and values, hence the same count) and the same eval-mode
outputs on a small image; its optimizer has the YAML recipe's parameter groups, its schedule the
YAML schedule, its train/test mappers and loaders the YAML data settings; one training step of a
timm twin gives its YAML twin's loss and updated weights. A slow test trains for a few
iterations, evaluates, resumes and re-evaluates through the entry point."""

import dataclasses
import json
import math
from typing import Dict, Sequence, Tuple

import detectron2.data.transforms as T
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.engine import SimpleTrainer
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from fvcore.common.param_scheduler import ParamScheduler
from omegaconf import DictConfig, ListConfig

import hila_d2
from hila_d2.data.mappers import build_train_mapper
from hila_d2.modeling.hila import HILASettings
from hila_d2.solver import build_lr_scheduler, build_optimizer
from project_config import REPO, load_config

LAZY_ROOT = REPO / "configs" / "lazy"
SEGFORMER = "configs/lazy/builtin/semantic-segmentation/segformer_mit_b0.py"
HILA_S3 = "configs/lazy/builtin/semantic-segmentation/hila_mit_b0_s3.py"
TIMM = "configs/lazy/builtin/semantic-segmentation/segformer_timm_convnext_atto.py"
TIMM_HILA_S3 = "configs/lazy/builtin/semantic-segmentation/hila_segformer_timm_convnext_atto_s3.py"

# lazy config -> its YAML twin
TWINS = {
    SEGFORMER: "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml",
    "configs/lazy/builtin/semantic-segmentation/hila_mit_b0_s3.py": (
        "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"
    ),
    TIMM: "configs/builtin/semantic-segmentation/segformer_timm_convnext_atto.yaml",
    TIMM_HILA_S3: "configs/builtin/semantic-segmentation/hila_segformer_timm_convnext_atto_s3.yaml",
    "configs/lazy/ade20k/semantic-segmentation/swin/upernet_swin_t_160k.py": (
        "configs/ade20k/semantic-segmentation/swin/upernet_swin_t_160k.yaml"
    ),
    "configs/lazy/ade20k/semantic-segmentation/swin/hila_upernet_swin_t_s234_160k.py": (
        "configs/ade20k/semantic-segmentation/swin/hila_upernet_swin_t_s234_160k.yaml"
    ),
    "configs/lazy/builtin/instance-segmentation/mask_rcnn_mit_b0.py": (
        "configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml"
    ),
    "configs/lazy/builtin/instance-segmentation/hila_mask_rcnn_mit_b0_s3.py": (
        "configs/builtin/instance-segmentation/hila_mask_rcnn_mit_b0_s3.yaml"
    ),
    "configs/lazy/coco/instance-segmentation/mask_rcnn_swin_t_1x.py": (
        "configs/coco/instance-segmentation/mask_rcnn_swin_t_1x.yaml"
    ),
    "configs/lazy/coco/instance-segmentation/hila_mask_rcnn_swin_t_s234_1x.py": (
        "configs/coco/instance-segmentation/hila_mask_rcnn_swin_t_s234_1x.yaml"
    ),
}
SWIN_TWINS = [lazy for lazy in TWINS if "swin" in lazy]
TIMM_TWINS = [lazy for lazy in TWINS if "timm" in lazy]
# the twins as parameters, the full-size Swin models marked slow (over ~5 s a test on 2 cores)
TWINS_SWIN_SLOW = [
    pytest.param(lazy, marks=pytest.mark.slow) if lazy in SWIN_TWINS else lazy
    for lazy in sorted(TWINS)
]
# tests/project_config.py turns the YAML SyncBN into BN (SyncBN needs GPUs): so do the lazy twins
# with a decode head (the Mask R-CNN twins have no SyncBN).
CPU_OVERRIDES = {
    lazy: ("model.sem_seg_head.norm=BN",) for lazy in SWIN_TWINS if "semantic-segmentation" in lazy
}
# Small models for the output comparison, the same change through both key systems: MiT depths
# 1/1/2/1 (HILA S3 then still runs one Top-Down step in stage 3). Swin has no depth key; the
# Swin twins (UperNet and Mask R-CNN) run at full size, on the small IMAGE_HW input, and so do the
# timm ConvNeXt-Atto twins (3.7M parameters; MODEL.TIMM.KWARGS takes no new key from the command
# line). Each entry: (YAML "KEY VALUE" opts, lazy "key=value" overrides).
MIT_DEPTHS = "[1, 1, 2, 1]"
SMALL = {
    lazy: (
        ("MODEL.MIT.DEPTHS", MIT_DEPTHS),
        (
            ("model.backbone.bottom_up" if "instance" in lazy else "model.backbone")
            + ".depths="
            + MIT_DEPTHS,
        ),
    )
    for lazy in TWINS
    if lazy not in SWIN_TWINS + TIMM_TWINS
}
# COCO's 80 classes: a randomly initialised box predictor scores each class about 1/81, under the
# 0.05 test threshold, which would leave no detection to compare; the output comparison lowers
# the threshold, again through both key systems (same entry format as SMALL).
SCORE_THRESH = "0.001"
OUTPUT_OPTS = {
    lazy: (
        ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", SCORE_THRESH),
        ("model.roi_heads.box_predictor.test_score_thresh=" + SCORE_THRESH,),
    )
    for lazy in TWINS
    if lazy.startswith("configs/lazy/coco/")
}
SEED = 0
IMAGE_HW = (64, 96)


def load_lazy(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A lazy config file (relative to the repository) with ``key=value`` overrides."""
    return LazyConfig.apply_overrides(LazyConfig.load(str(REPO / path)), list(overrides))


def seeded(build, seed: int = SEED) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build().eval()


def build_pair(lazy: str, small: bool = True) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(YAML model, lazy model), each built right after ``torch.manual_seed(SEED)``; with
    ``small``, through the SMALL and OUTPUT_OPTS overrides.

    Both build the same modules in the same order (encoder, its HILA pairs, then FPN and heads,
    as detectron2's ``from_config`` builders and LazyConfig's argument-by-argument
    instantiation do), so the same seed gives the same initial weights, which
    ``assert_same_weights`` checks instead of copying them over."""
    yaml_opts, lazy_overrides = SMALL.get(lazy, ((), ())) if small else ((), ())
    if small:
        output_yaml_opts, output_lazy_overrides = OUTPUT_OPTS.get(lazy, ((), ()))
        yaml_opts, lazy_overrides = (
            yaml_opts + output_yaml_opts,
            lazy_overrides + output_lazy_overrides,
        )
    yaml_model = seeded(lambda: build_model(load_config(TWINS[lazy], *yaml_opts)))
    lazy_cfg = load_lazy(lazy, CPU_OVERRIDES.get(lazy, ()) + lazy_overrides)
    lazy_model = seeded(lambda: instantiate(lazy_cfg.model))
    return yaml_model, lazy_model


def assert_same_weights(yaml_model: torch.nn.Module, lazy_model: torch.nn.Module) -> None:
    theirs, ours = yaml_model.state_dict(), lazy_model.state_dict()
    assert list(ours) == list(theirs), sorted(set(ours) ^ set(theirs))[:20]
    different = [k for k in theirs if not torch.equal(theirs[k], ours[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sample_inputs():
    """One random RGB image at IMAGE_HW in detectron2's input format (CHW, 0-255 values)."""
    generator = torch.Generator().manual_seed(7)
    image = torch.randint(0, 256, (3, *IMAGE_HW), generator=generator).float()
    return [{"image": image, "height": IMAGE_HW[0], "width": IMAGE_HW[1]}]


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for this module's forward passes (restored afterwards): on a shared
    2-core machine two threads contend with other processes and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_lazy_config_has_a_yaml_twin():
    leaves = {
        str(path.relative_to(REPO))
        for path in LAZY_ROOT.rglob("*.py")
        if "common" not in path.relative_to(LAZY_ROOT).parts
    }
    assert leaves == set(TWINS)
    for lazy, yaml in TWINS.items():
        assert (REPO / yaml).is_file(), yaml
        # configs/lazy/<path>.py mirrors configs/<path>.yaml
        assert lazy.replace("configs/lazy/", "configs/", 1)[: -len(".py")] + ".yaml" == yaml


@pytest.mark.parametrize("lazy", sorted(TWINS))
def test_lazy_config_loads_and_instantiates(lazy, single_thread):
    cfg = load_lazy(lazy)
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg)
    assert {"train", "test", "evaluator"} <= set(cfg.dataloader)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, torch.optim.AdamW)
    # every trainable parameter is in exactly one group
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert isinstance(instantiate(cfg.lr_multiplier), ParamScheduler)
    train_keys = (
        "output_dir",
        "max_iter",
        "device",
        "seed",
        "checkpointer",
        "weights_optional_keys",
        "hila_warmup_iters",
    )
    assert all(key in cfg.train for key in train_keys)
    mappers = [instantiate(cfg.dataloader.train.mapper), instantiate(cfg.dataloader.test.mapper)]
    assert all(isinstance(mapper, DatasetMapper) for mapper in mappers)
    names = [cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names]
    assert all(name in DatasetCatalog.list() for name in names), names
    # generated on demand; ADE20K and COCO must be downloaded (their names are registered)
    if lazy.startswith("configs/lazy/builtin/"):
        loader = instantiate(cfg.dataloader.train)
        batch = next(iter(loader))
        assert len(batch) == cfg.dataloader.train.total_batch_size
        assert batch[0]["image"].shape[-2:] == (128, 128)
        assert len(instantiate(cfg.dataloader.test)) == len(DatasetCatalog.get(names[1]))
        evaluator = instantiate(cfg.dataloader.evaluator)
        assert isinstance(evaluator, (SemSegEvaluator, COCOEvaluator))


@pytest.mark.parametrize("lazy", sorted(SMALL))
def test_full_size_model_equals_the_yaml_twin(lazy, single_thread):
    """The configs as written: same parameter count, names, shapes and seeded values (the Swin
    twins, UperNet and Mask R-CNN, and the timm twins are compared at full size by the output test
    below)."""
    yaml_model, lazy_model = build_pair(lazy, small=False)
    assert parameter_count(lazy_model) == parameter_count(yaml_model)
    assert_same_weights(yaml_model, lazy_model)


def _assert_same_instances(theirs: Instances, ours: Instances) -> None:
    assert len(theirs) > 0, "no detections: the comparison would be vacuous"
    assert ours.image_size == theirs.image_size
    assert (
        set(ours.get_fields()) == set(theirs.get_fields()) >= {"pred_boxes", "scores", "pred_masks"}
    )
    torch.testing.assert_close(ours.pred_boxes.tensor, theirs.pred_boxes.tensor, rtol=0, atol=0)
    for field in ("scores", "pred_classes", "pred_masks"):
        torch.testing.assert_close(ours.get(field), theirs.get(field), rtol=0, atol=0)


@pytest.mark.parametrize("lazy", TWINS_SWIN_SLOW)
def test_small_model_gives_the_yaml_twins_outputs(lazy, single_thread):
    """The same size overrides through both key systems, then the same eval-mode outputs."""
    yaml_model, lazy_model = build_pair(lazy)
    assert parameter_count(lazy_model) == parameter_count(yaml_model)
    assert_same_weights(yaml_model, lazy_model)
    detection = "instance-segmentation" in lazy
    inputs = sample_inputs()
    normalized = torch.randn(1, 3, *IMAGE_HW, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        theirs, ours = yaml_model(inputs), lazy_model(inputs)
        yaml_features = yaml_model.backbone(normalized)
        lazy_features = lazy_model.backbone(normalized)
    assert list(lazy_features) == list(yaml_features)
    for name, feature in yaml_features.items():
        torch.testing.assert_close(lazy_features[name], feature, rtol=0, atol=0)
    if detection:
        _assert_same_instances(theirs[0]["instances"], ours[0]["instances"])
    else:
        num_classes = yaml_model.sem_seg_head.predictor.out_channels
        assert ours[0]["sem_seg"].shape == theirs[0]["sem_seg"].shape == (num_classes, *IMAGE_HW)
        torch.testing.assert_close(ours[0]["sem_seg"], theirs[0]["sem_seg"], rtol=0, atol=0)


def test_the_comparison_tells_models_apart(single_thread):
    """The checks above fail for a lazy model that differs: HILA switched on (other modules,
    other count), or only another seed (same count, other weights and outputs)."""
    cfg = load_config(TWINS[SEGFORMER], "MODEL.MIT.DEPTHS", MIT_DEPTHS)
    yaml_model = seeded(lambda: build_model(cfg))
    with_hila = load_lazy(
        SEGFORMER, ["model.backbone.depths=" + MIT_DEPTHS, "model.backbone.hila.stages=[3]"]
    )
    hila_model = seeded(lambda: instantiate(with_hila.model))
    assert parameter_count(hila_model) > parameter_count(yaml_model)
    with pytest.raises(AssertionError):
        assert_same_weights(yaml_model, hila_model)
    plain = load_lazy(SEGFORMER, ["model.backbone.depths=" + MIT_DEPTHS])
    reseeded = seeded(lambda: instantiate(plain.model), seed=SEED + 1)
    assert parameter_count(reseeded) == parameter_count(yaml_model)
    with pytest.raises(AssertionError):
        assert_same_weights(yaml_model, reseeded)
    inputs = sample_inputs()
    with torch.no_grad():
        assert not torch.allclose(reseeded(inputs)[0]["sem_seg"], yaml_model(inputs)[0]["sem_seg"])


def hyperparameters(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, tuple]:
    """Parameter name -> (lr, weight_decay, betas) of its optimizer group."""
    by_id = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_id[id(p)] = (group["lr"], group["weight_decay"], tuple(group["betas"]))
    return {name: by_id[id(p)] for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lazy", TWINS_SWIN_SLOW)
def test_optimizer_and_schedule_follow_the_yaml_recipe(lazy, single_thread):
    yaml_cfg = hila_d2.load_config(str(REPO / TWINS[lazy]))  # as written (device, seed)
    yaml_opts, lazy_overrides = SMALL.get(lazy, ((), ()))
    model_cfg = load_config(TWINS[lazy], *yaml_opts)
    yaml_model = build_model(model_cfg)
    yaml_optimizer = build_optimizer(model_cfg, yaml_model)
    cfg = load_lazy(lazy, CPU_OVERRIDES.get(lazy, ()) + lazy_overrides)
    lazy_model = instantiate(cfg.model)
    cfg.optimizer.params.model = lazy_model
    lazy_optimizer = instantiate(cfg.optimizer)
    assert type(lazy_optimizer) is type(yaml_optimizer)
    ours = hyperparameters(lazy_model, lazy_optimizer)
    assert ours == hyperparameters(yaml_model, yaml_optimizer)
    assert len({wd for _, wd, _ in ours.values()}) == 2  # decay and no decay (norms, tables)

    max_iter = cfg.train.max_iter
    assert max_iter == yaml_cfg.SOLVER.MAX_ITER
    assert cfg.train.checkpointer.period == yaml_cfg.SOLVER.CHECKPOINT_PERIOD
    assert cfg.train.eval_period == yaml_cfg.TEST.EVAL_PERIOD
    assert cfg.train.seed == yaml_cfg.SEED
    assert cfg.train.device == yaml_cfg.MODEL.DEVICE
    assert cfg.train.init_checkpoint == yaml_cfg.MODEL.WEIGHTS
    assert list(cfg.train.weights_optional_keys) == list(yaml_cfg.MODEL.WEIGHTS_OPTIONAL_KEYS)
    assert cfg.train.hila_warmup_iters == yaml_cfg.SOLVER.HILA_WARMUP_ITERS
    yaml_schedule = build_lr_scheduler(model_cfg, yaml_optimizer)
    lazy_schedule = instantiate(cfg.lr_multiplier)
    step = max(1, max_iter // 2000)
    iterations = sorted(
        set(range(0, max_iter, step)) | {1, yaml_cfg.SOLVER.WARMUP_ITERS, max_iter - 1}
    )
    for iteration in iterations:
        where = iteration / max_iter
        assert lazy_schedule(where) == pytest.approx(
            yaml_schedule._multiplier(where), rel=1e-9
        ), iteration


@pytest.mark.parametrize("lazy", TIMM_TWINS)
def test_one_training_step_equals_the_yaml_twins(lazy, single_thread):
    """One CPU training iteration of each twin (detectron2's SimpleTrainer, as
    lazyconfig_train_net.py runs it, on one batch of 2 from the lazy config's training loader):
    a finite loss, a gradient for every trainable parameter (DistributedDataParallel stops on a
    parameter without one), changed weights, and the same loss and updated weights for both."""
    yaml_model, lazy_model = build_pair(lazy)
    cfg = load_lazy(lazy, ["dataloader.train.total_batch_size=2"])
    batch = next(iter(instantiate(cfg.dataloader.train)))
    yaml_optimizer = build_optimizer(load_config(TWINS[lazy]), yaml_model)
    cfg.optimizer.params.model = lazy_model
    lazy_optimizer = instantiate(cfg.optimizer)
    before = {k: v.clone() for k, v in lazy_model.state_dict().items()}
    losses = []
    for model, optimizer in ((yaml_model, yaml_optimizer), (lazy_model, lazy_optimizer)):
        model.train()
        trainer = SimpleTrainer(model, [batch], optimizer)
        torch.manual_seed(SEED)  # the head's dropout
        with EventStorage(0) as storage:
            trainer.iter = 0
            trainer.run_step()
        losses.append(storage.latest()["total_loss"][0])
        no_grad = [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"parameters without a gradient: {no_grad[:8]}"
    assert math.isfinite(losses[1]) and losses[1] > 0
    assert losses[1] == losses[0]
    assert_same_weights(yaml_model, lazy_model)
    changed = [k for k, v in lazy_model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.encoder.") for k in changed)
    assert any(k.startswith("sem_seg_head.") for k in changed)
    if "hila" in lazy:
        assert any(k.startswith("backbone.hila.") for k in changed)


def _plain(value):
    """Containers as plain lists and dicts and augmentations as (type, attributes), for comparing
    objects built from yacs and from lazy configs."""
    if isinstance(value, T.Augmentation):
        return (type(value).__name__, {k: _plain(v) for k, v in vars(value).items()})
    if isinstance(value, (list, tuple, ListConfig)):
        return [_plain(v) for v in value]
    if isinstance(value, (dict, DictConfig)):
        return {k: _plain(v) for k, v in value.items()}
    return value


def describe_mapper(mapper: DatasetMapper) -> dict:
    description = {k: _plain(v) for k, v in vars(mapper).items() if k != "augmentations"}
    description["augmentations"] = [_plain(aug) for aug in mapper.augmentations.augs]
    return description


@pytest.mark.parametrize("lazy", sorted(TWINS))
def test_data_follow_the_yaml_recipe(lazy):
    yaml_cfg = hila_d2.load_config(str(REPO / TWINS[lazy]))
    cfg = load_lazy(lazy)
    train, test = cfg.dataloader.train, cfg.dataloader.test
    assert [train.dataset.names] == list(yaml_cfg.DATASETS.TRAIN)
    assert [test.dataset.names] == list(yaml_cfg.DATASETS.TEST)
    assert train.total_batch_size == yaml_cfg.SOLVER.IMS_PER_BATCH
    assert train.num_workers == test.num_workers == yaml_cfg.DATALOADER.NUM_WORKERS
    assert describe_mapper(instantiate(train.mapper)) == describe_mapper(
        build_train_mapper(yaml_cfg)
    )
    assert describe_mapper(instantiate(test.mapper)) == describe_mapper(
        DatasetMapper(yaml_cfg, False)
    )
    evaluator_type = MetadataCatalog.get(test.dataset.names).evaluator_type
    expected = {"sem_seg": SemSegEvaluator, "coco": COCOEvaluator}[evaluator_type]
    assert cfg.dataloader.evaluator._target_ is expected
    assert cfg.dataloader.evaluator.dataset_name == test.dataset.names
    model = cfg.model
    if "sem_seg_head" in model:
        assert model.sem_seg_head.num_classes == yaml_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        features = set(model.sem_seg_head.input_shape) - {"_target_"}
        assert features == set(yaml_cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)
    else:
        assert model.roi_heads.num_classes == yaml_cfg.MODEL.ROI_HEADS.NUM_CLASSES


def lazy_encoder(model_cfg: DictConfig) -> DictConfig:
    """The encoder node of a lazy model config (Mask R-CNN: the FPN's bottom-up)."""
    backbone = model_cfg.backbone
    return backbone.bottom_up if "bottom_up" in backbone else backbone


@pytest.mark.parametrize("lazy", sorted(TWINS))
def test_encoder_arguments_follow_the_yaml(lazy):
    """The encoder's constructor arguments are those its ``from_config`` reads from the YAML twin,
    also the ones that the seeded-weight and output comparisons cannot see: the drop-path rate
    (no parameters, inactive in eval mode) and MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE (it acts
    when a checkpoint is loaded)."""
    yaml_cfg = load_config(TWINS[lazy])
    encoder = lazy_encoder(load_lazy(lazy).model)
    # the input shape that detectron2's build_backbone gives the backbone builder
    input_shape = ShapeSpec(channels=len(yaml_cfg.MODEL.PIXEL_MEAN))
    theirs = encoder._target_.from_config(yaml_cfg, input_shape)
    ours = {key: value for key, value in encoder.items() if key != "_target_"}
    ours["hila"] = instantiate(ours["hila"])
    assert isinstance(ours["hila"], HILASettings)
    for arguments in (ours, theirs):
        arguments["hila"] = dataclasses.asdict(arguments["hila"])
    assert _plain(ours) == _plain(theirs)


def test_overrides_reach_the_optimizer_groups(single_thread):
    """``optimizer.lr`` sets every group's base LR (interpolated), the head LR multiplier scales
    the parameters outside the backbone only."""
    cfg = load_lazy(
        SEGFORMER,
        [
            "model.backbone.depths=[1,1,1,1]",
            "optimizer.lr=1e-3",
            "optimizer.params.head_lr_multiplier=10",
        ],
    )
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    lrs = {
        name: lr for name, (lr, _, _) in hyperparameters(model, instantiate(cfg.optimizer)).items()
    }
    backbone = {lr for name, lr in lrs.items() if name.startswith("backbone.")}
    head = {lr for name, lr in lrs.items() if not name.startswith("backbone.")}
    assert len(backbone) == len(head) == 1
    assert backbone.pop() == pytest.approx(1e-3) and head.pop() == pytest.approx(1e-2)


def test_saved_config_loads_and_builds_the_same_model(tmp_path, single_thread):
    """The config.yaml that a run writes (detectron2's LazyConfig.save) names only importable
    targets: it loads and instantiates to the same model and optimizer groups."""
    cfg = load_lazy(
        SEGFORMER, ["model.backbone.depths=" + MIT_DEPTHS, "model.backbone.hila.stages=[3]"]
    )
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    assert not (tmp_path / "config.yaml.pkl").exists()  # written only when yaml fails
    reloaded = LazyConfig.load(str(tmp_path / "config.yaml"))
    original, again = (seeded(lambda c=c: instantiate(c.model)) for c in (cfg, reloaded))
    assert_same_weights(original, again)
    groups = []
    for c, model in ((cfg, original), (reloaded, again)):
        c.optimizer.params.model = model
        groups.append(hyperparameters(model, instantiate(c.optimizer)))
    assert groups[0] == groups[1]
    assert isinstance(instantiate(reloaded.lr_multiplier), ParamScheduler)


# ---- lazyconfig_train_net.py ---------------------------------------------------------------


@pytest.mark.slow
def test_lazyconfig_train_net_trains_evaluates_and_resumes(train_net, tmp_path):
    """4 iterations (batch 2) on the built-in dataset on CPU, evaluation on its val split; a
    --resume run to 6 iterations starts at iteration 4 from the saved checkpoint; --eval-only of
    the final checkpoint reproduces that run's mIoU."""
    out = tmp_path / "run"
    overrides = [
        "train.device=cpu",
        "dataloader.train.total_batch_size=2",
        "train.log_period=1",
        "train.checkpointer.period=2",
    ]

    def run(*overrides_and_flags: str, flags=(), output_dir=out):
        return train_net(
            SEGFORMER, *overrides, *overrides_and_flags, flags=flags, output_dir=output_dir
        )

    trained = run("train.max_iter=4")
    assert (out / "model_0000001.pth").is_file() and (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (out / "config.yaml").is_file()
    losses = trained.losses()
    assert sorted(losses) == [0, 1, 2, 3]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses.values())
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    mious = [m["sem_seg/mIoU"] for m in records if "sem_seg/mIoU" in m]
    assert len(mious) == 1 and 0.0 <= mious[0] <= 100.0
    assert trained.final_metrics["sem_seg/mIoU"] == pytest.approx(mious[0], abs=1e-4)
    checkpoint = torch.load(out / "model_final.pth", weights_only=False)
    assert checkpoint["iteration"] == 3 and {"optimizer", "hooks"} <= set(checkpoint["trainer"])

    resumed = run("train.max_iter=6", flags=["--resume"])
    assert "Starting training from iteration 4" in resumed.log
    assert sorted(resumed.losses()) == [0, 1, 2, 3, 4, 5]  # appended: 0-3 were not rerun
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 5

    weights = f"train.init_checkpoint={out / 'model_final.pth'}"
    evaluated = run(weights, flags=["--eval-only"], output_dir=tmp_path / "eval")
    assert evaluated.final_metrics == pytest.approx(resumed.final_metrics, abs=2e-4)


@pytest.mark.slow
def test_lazyconfig_train_net_warms_up_the_hila_pairs(train_net, tmp_path):
    """train.hila_warmup_iters reaches lazyconfig_train_net.py's hooks: the warmup is announced
    and the run trains; a value that leaves no iteration at full strength is refused before
    training, naming the lazy keys."""
    overrides = [
        "train.device=cpu",
        "dataloader.train.total_batch_size=2",
        "train.max_iter=3",
        "train.log_period=1",
    ]
    run = train_net(HILA_S3, *overrides, "train.hila_warmup_iters=2", output_dir=tmp_path / "a")
    announced = "HILA warmup: the pairs' strength rises linearly from 0 at iteration 0 to 1 at"
    assert f"{announced} iteration 2" in run.log
    assert sorted(run.losses()) == [0, 1, 2]
    refused = r"train.hila_warmup_iters must be an integer in \[0, train.max_iter = 3\), got 3"
    with pytest.raises(AssertionError, match=refused):
        train_net(HILA_S3, *overrides, "train.hila_warmup_iters=3", output_dir=tmp_path / "b")

