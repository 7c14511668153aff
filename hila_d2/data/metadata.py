"""Class names that weights carry (``ValidatingCheckpointer.class_names``, e.g. a hub
``config.json``'s ``id2label``) in a dataset's ``MetadataCatalog`` entry, where detectron2's
evaluators and visualizers read ``stuff_classes``."""

import logging
from typing import Sequence

from detectron2.data import MetadataCatalog

__all__ = ["set_class_names"]

_SHOWN = 5  # differing names listed in the warning


def set_class_names(dataset_name: str, class_names: Sequence[str], weights: str) -> None:
    """Give the dataset ``dataset_name`` the ``class_names`` (str, one per class the model
    predicts) of the weights file ``weights`` (named in messages) as its ``stuff_classes`` where
    it has none. The dataset owns its metadata: where it has as many names, its own are kept
    (a warning lists the first that differ); where it has another count, ValueError naming the
    dataset, the weights and both counts."""
    metadata = MetadataCatalog.get(dataset_name)
    own = metadata.get("stuff_classes", None)
    if own is None:
        metadata.set(stuff_classes=list(class_names))
        return
    if len(own) != len(class_names):
        raise ValueError(
            f"The dataset {dataset_name!r} has {len(own)} classes (stuff_classes) but the "
            f"weights {weights!r} name {len(class_names)}, the classes the model predicts: give "
            "DATASETS.TRAIN / DATASETS.TEST datasets of those classes, or, to train a new head "
            f"for the dataset's classes, set MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(own)}"
        )
    differ = [
        f"{i}: {ours!r} / {theirs!r}"
        for i, (ours, theirs) in enumerate(zip(own, class_names))
        if ours != theirs
    ]
    if differ:
        more = f" and {len(differ) - _SHOWN} more" if len(differ) > _SHOWN else ""
        logging.getLogger(__name__).warning(
            f"The weights {weights!r} name {len(differ)} of the {len(own)} classes of "
            f"{dataset_name!r} differently (index: dataset / weights): "
            f"{', '.join(differ[:_SHOWN])}{more}; keeping the dataset's stuff_classes"
        )
