#!/usr/bin/env python
"""Train and evaluate hila_d2 models from detectron2 LazyConfig (Python) files.

    python lazyconfig_train_net.py --config-file configs/lazy/builtin/semantic-segmentation/segformer_mit_b0.py
    python lazyconfig_train_net.py --config-file CONFIG train.max_iter=100 optimizer.lr=1e-4
    python lazyconfig_train_net.py --config-file CONFIG --eval-only train.init_checkpoint=output/model_final.pth
    python lazyconfig_train_net.py --config-file CONFIG --resume        # continue from the last checkpoint
    python lazyconfig_train_net.py --config-file CONFIG --num-gpus 8    # or --num-machines/--machine-rank/--dist-url
    python lazyconfig_train_net.py --config-file CONFIG --num-gpus 2 train.device=cpu   # 2 CPU processes (gloo)

A config defines ``model``, ``dataloader.{train,test,evaluator}``, ``optimizer`` (its
``params.model`` is set here), ``lr_multiplier`` (an fvcore ParamScheduler of the training
progress) and ``train`` (configs/lazy/common/train.py: output_dir, init_checkpoint, max_iter, amp,
ddp, checkpointer, eval_period, log_period, device, seed, weights_optional_keys,
hila_warmup_iters). Overrides are
``key=value`` (Hydra's override syntax). docs/LAZYCONFIG.md describes the configs.

An optional ``datasets`` node registers datasets of one's own right after the config is loaded,
as train_net.py's DATASETS.SEM_SEG_FOLDERS / COCO_JSONS do
(``hila_d2.data.register_datasets_from_lazy_config``)::

    datasets = dict(
        sem_seg_folders=dict(splits=[("my_train", "data/train/images", "data/train/labels")],
                             classes=["background", "road", "car"], ignore_label=255),
        coco_jsons=dict(splits=[("my_instances", "data/train.json", "data/train/images")]),
    )

or, on the command line, ``'datasets.sem_seg_folders.splits=[[my_train,data/train/images,
data/train/labels]]' 'datasets.sem_seg_folders.classes=[background,road,car]'``.
"""
import logging
from typing import Any, Dict

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import hila_d2  # noqa: F401  (registers the backbones, heads and the built-in datasets)
from hila_d2.checkpoint.loading import ValidatingCheckpointer
from hila_d2.data import register_datasets_from_lazy_config
from hila_d2.hooks import hila_warmup

logger = logging.getLogger("hila_d2")


def wrap_for_distributed(model: torch.nn.Module, ddp_options) -> torch.nn.Module:
    """detectron2's ``create_ddp_model`` (a no-op in a single process) with ``train.ddp``; a model
    on CPU (``train.device=cpu`` with several processes over gloo) gets no ``device_ids``, which
    DistributedDataParallel accepts for GPU modules only."""
    options = dict(ddp_options)
    if all(p.device.type == "cpu" for p in model.parameters()):
        options.setdefault("device_ids", None)
    return create_ddp_model(model, **options)


def evaluate(cfg, model: torch.nn.Module) -> Dict[str, Any]:
    """Run ``dataloader.test`` through ``model`` and score it with ``dataloader.evaluator``;
    {} when the config has no evaluator."""
    if "evaluator" not in cfg.dataloader:
        logger.info("The config has no dataloader.evaluator: nothing to evaluate")
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_model(cfg) -> torch.nn.Module:
    """``cfg.model`` instantiated, on ``train.device``."""
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    return model.to(torch.device(cfg.train.device))


def do_train(args, cfg) -> Dict[str, Any]:
    """Train for ``train.max_iter`` iterations (from the last checkpoint with ``--resume``),
    checkpointing every ``train.checkpointer.period`` iterations and at the end, evaluating every
    ``train.eval_period`` iterations (0: only at the end); returns the last evaluation."""
    if cfg.train.amp.enabled and torch.device(cfg.train.device).type != "cuda":
        raise ValueError(
            f"train.amp.enabled needs train.device=cuda (detectron2's AMPTrainer), got "
            f"train.device={cfg.train.device!r}"
        )
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = wrap_for_distributed(model, cfg.train.ddp)
    trainer_cls = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_cls(model, train_loader, optimizer)
    # MODEL.WEIGHTS_OPTIONAL_KEYS of the YAML configs: modules that initialisation weights may
    # lack; resuming a run from its own checkpoint requires every key
    checkpointer = ValidatingCheckpointer(
        model,
        cfg.train.output_dir,
        optional_keys=cfg.train.get("weights_optional_keys", ()),
        trainer=trainer,
    )
    last_results: Dict[str, Any] = {}

    def evaluate_and_keep() -> Dict[str, Any]:
        last_results.clear()
        last_results.update(evaluate(cfg, model))
        return last_results

    main_process = comm.is_main_process()
    warmup = hila_warmup(
        cfg.train.get("hila_warmup_iters", 0),
        cfg.train.max_iter,
        key="train.hila_warmup_iters",
        max_iter_key="train.max_iter",
    )
    training_hooks = [
        *([warmup] if warmup else []),
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
    ]
    if main_process:
        training_hooks.append(hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer))
    # before the writer, so that the final evaluation reaches metrics.json
    training_hooks.append(hooks.EvalHook(cfg.train.eval_period, evaluate_and_keep))
    if main_process:
        writers = default_writers(cfg.train.output_dir, cfg.train.max_iter)
        training_hooks.append(hooks.PeriodicWriter(writers, period=cfg.train.log_period))
    trainer.register_hooks(training_hooks)

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # a checkpoint holds the iteration that had just finished
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last_results)


def do_eval(args, cfg) -> Dict[str, Any]:
    """Evaluate ``train.init_checkpoint`` (with ``--resume``: the last checkpoint of
    ``train.output_dir`` when there is one); every key of the model must load."""
    model = build_model(cfg)
    ValidatingCheckpointer(model, save_dir=cfg.train.output_dir).resume_or_load(
        cfg.train.init_checkpoint, resume=args.resume
    )
    return evaluate(cfg, wrap_for_distributed(model, cfg.train.ddp))


def setup(args):
    """The config file with the command-line overrides; the datasets of its ``datasets`` node
    registered and checked; logging, the seed and the saved ``config.yaml`` through detectron2's
    ``default_setup``."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    registered = register_datasets_from_lazy_config(
        cfg, check_label_values=comm.get_local_rank() == 0
    )
    default_setup(cfg, args)
    setup_logger(output=cfg.train.output_dir, distributed_rank=comm.get_rank(), name="hila_d2")
    if registered:
        logger.info("Registered and checked the datasets %s", registered)
    return cfg


def main(args) -> Dict[str, Any]:
    cfg = setup(args)
    if args.eval_only:
        return do_eval(args, cfg)
    return do_train(args, cfg)


if __name__ == "__main__":
    parsed = default_argument_parser().parse_args()
    launch(
        main,
        parsed.num_gpus,
        num_machines=parsed.num_machines,
        machine_rank=parsed.machine_rank,
        dist_url=parsed.dist_url,
        args=(parsed,),
    )
