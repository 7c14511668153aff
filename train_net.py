#!/usr/bin/env python
"""Train and evaluate hila_d2 models with detectron2.

    python train_net.py --config-file configs/builtin/semantic-segmentation/segformer_mit_b0.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CONFIG --resume           # continue from the last checkpoint
    python train_net.py --config-file CONFIG --num-gpus 8       # or --num-machines/--machine-rank/--dist-url
    python train_net.py --config-file CONFIG --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)

Datasets of one's own: DATASETS.SEM_SEG_FOLDERS (folders of images and label PNGs) and
DATASETS.COCO_JSONS (COCO-format JSONs) are registered, and their files checked, right after the
config is loaded (``hila_d2.data.register_datasets_from_config``; docs/GETTING_STARTED.md, "Train
on your own data"):

    python train_net.py --config-file configs/custom/semantic-segmentation/segformer_mit_b0_folder.yaml

Weights that name their classes (a hub model directory's config.json ``id2label``, a file
converted from one, a checkpoint of a run initialised from one) give them to the datasets without
``stuff_classes`` (``hila_d2.data.metadata.set_class_names``): DATASETS.TEST when evaluating,
DATASETS.TRAIN and TEST when training; the evaluators then report each class by its name.
"""
import logging
import os
from unittest import mock

import detectron2.utils.comm as comm
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.engine import defaults as engine_defaults
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    verify_results,
)
from detectron2.utils.logger import setup_logger

import hila_d2
from hila_d2.checkpoint.loading import ValidatingCheckpointer
from hila_d2.data import register_datasets_from_config
from hila_d2.data.mappers import CheckedDatasetMapper, build_train_mapper
from hila_d2.data.metadata import set_class_names
from hila_d2.evaluation import BoundaryFScoreEvaluator
from hila_d2.hooks import build_hila_warmup
from hila_d2.solver import build_lr_scheduler, build_optimizer


def _panoptic_sem_seg_matches(cfg, metadata) -> bool:
    """Whether a panoptic dataset's ``sem_seg_root`` maps label the model's semantic classes."""
    if not metadata.get("sem_seg_root", None):
        return False
    matches = len(metadata.stuff_classes) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if not matches:
        logging.getLogger("hila_d2").info(
            "Not scoring semantic segmentation on %s: its maps have %d classes, the model's "
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES is %d (PanopticFPN is scored on *_panoptic_separated)",
            metadata.name,
            len(metadata.stuff_classes),
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        )
    return matches


_create_ddp_model = engine_defaults.create_ddp_model


def create_ddp_model(model, **kwargs):
    """detectron2's ``create_ddp_model``, except that a model on CPU (``--num-gpus N`` with
    ``MODEL.DEVICE cpu``: N processes over gloo) gets no ``device_ids``, which
    DistributedDataParallel accepts for GPU modules only."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        kwargs.setdefault("device_ids", None)
    return _create_ddp_model(model, **kwargs)


class Trainer(DefaultTrainer):
    """detectron2's trainer with hila_d2's mapper, optimiser, schedule, evaluators and
    checkpointer."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ wraps the model with detectron2.engine.defaults'
        # create_ddp_model: ours stands in for it during this constructor only
        with mock.patch.object(engine_defaults, "create_ddp_model", create_ddp_model):
            super().__init__(cfg)

    def build_hooks(self):
        """detectron2's hooks, after ``self.checkpointer`` (built just before, and saved through
        by the periodic checkpointer hook) became a ``ValidatingCheckpointer``: MODEL.WEIGHTS
        must fit the model up to MODEL.WEIGHTS_OPTIONAL_KEYS, a resumed checkpoint entirely; the
        checkpoints it saves keep the class names the weights carry. With
        SOLVER.HILA_WARMUP_ITERS, ``HILAWarmup`` comes first."""
        checkpointer = self.checkpointer
        self.checkpointer = ValidatingCheckpointer(
            checkpointer.model,
            checkpointer.save_dir,
            optional_keys=self.cfg.MODEL.WEIGHTS_OPTIONAL_KEYS,
            **checkpointer.checkpointables,
        )
        warmup = build_hila_warmup(self.cfg)
        return ([warmup] if warmup else []) + super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Evaluators chosen by the dataset's ``evaluator_type`` metadata: SemSegEvaluator (plus
        the boundary F-score when TEST.BOUNDARY_FSCORE.ENABLED), COCOEvaluator (pycocotools when
        detectron2's C++ evaluation is absent), COCOPanopticEvaluator. On a panoptic dataset the
        semantic output is also scored when the dataset has ``sem_seg_root`` maps with as many
        classes as the model predicts (PanopticFPN on ``*_panoptic_separated``)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        metadata = MetadataCatalog.get(dataset_name)
        evaluator_type = metadata.get("evaluator_type", None)
        evaluators = []
        if evaluator_type in ("sem_seg", "cityscapes_sem_seg") or (
            evaluator_type == "coco_panoptic_seg" and _panoptic_sem_seg_matches(cfg, metadata)
        ):
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
            if cfg.TEST.BOUNDARY_FSCORE.ENABLED:
                evaluators.append(
                    BoundaryFScoreEvaluator(
                        dataset_name,
                        output_dir=output_folder,
                        tolerance=cfg.TEST.BOUNDARY_FSCORE.TOLERANCE,
                    )
                )
        if evaluator_type in ("coco", "coco_panoptic_seg"):
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
        if evaluator_type == "coco_panoptic_seg":
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if not evaluators:
            raise NotImplementedError(
                f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; train_net.py "
                "evaluates 'sem_seg', 'coco' and 'coco_panoptic_seg' datasets"
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader, whose mapper (which reads a semantic label too) names the
        files of a label that does not fit its image."""
        return build_detection_test_loader(
            cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)


def use_class_names(checkpointer: ValidatingCheckpointer, dataset_names) -> None:
    """``set_class_names`` of each of ``dataset_names`` to the class names of the weights
    ``checkpointer`` loaded, where they have some (``checkpointer.class_names``)."""
    if checkpointer.class_names is not None:
        for name in dataset_names:
            set_class_names(name, checkpointer.class_names, checkpointer.loaded_path)


def setup(args):
    """Config from defaults + hila_d2 keys + the file + command-line overrides, validated; the
    datasets of DATASETS.SEM_SEG_FOLDERS / COCO_JSONS registered and checked."""
    cfg = hila_d2.load_config(args.config_file, args.opts)
    hila_d2.validate_config(cfg)  # before anything is written, built or loaded
    # every process registers them; reading every label's values once per machine is enough
    registered = register_datasets_from_config(cfg, check_label_values=comm.get_local_rank() == 0)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hila_d2")
    if registered:
        logging.getLogger("hila_d2").info("Registered and checked the datasets %s", registered)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = ValidatingCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        # every key must match: no module of an evaluated model keeps its initialisation
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        use_class_names(checkpointer, cfg.DATASETS.TEST)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    use_class_names(trainer.checkpointer, (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST))
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
