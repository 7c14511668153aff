"""Loading checkpoints into a model with the checks that detectron2 only logs.

detectron2's ``DetectionCheckpointer`` loads whatever fits and logs the rest, so a checkpoint for
another variant or with missing keys trains or evaluates a half-random model without an error.
``ValidatingCheckpointer`` raises a ``CheckpointError`` instead, listing what is wrong.
"""
import fnmatch
from typing import Any, Dict, Iterable, List, Sequence, Set

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

__all__ = ["CheckpointError", "ValidatingCheckpointer"]

_SHOWN = 10  # keys listed per kind of problem


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose keys or shapes do not fit the model."""


def _listing(title: str, items: Sequence[str]) -> List[str]:
    """``title (n):`` and the first ``_SHOWN`` items, one per line; [] for no items."""
    if not items:
        return []
    lines = [f"  {title} ({len(items)}):"] + [f"    {item}" for item in items[:_SHOWN]]
    if len(items) > _SHOWN:
        lines.append(f"    ... and {len(items) - _SHOWN} more")
    return lines


def _unbuilt_keys(model: nn.Module) -> Set[str]:
    """The state-dict keys, relative to ``model``, of the modules that hila_d2's encoders inside
    it dropped because they produce no requested output (``PyramidBackbone.unbuilt_keys``)."""
    return {
        f"{name}.{key}" if name else key
        for name, module in model.named_modules()
        for key in getattr(module, "unbuilt_keys", ())
    }


class ValidatingCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` that refuses checkpoints that do not fit the model.

    A file that cannot be read (truncated, not a checkpoint, or holding objects that
    ``torch.load(weights_only=True)`` refuses), a key of the model the checkpoint lacks, a key of
    the checkpoint the model lacks, and a tensor of another shape each raise a ``CheckpointError``
    that lists them. Keys matching ``optional_keys`` (fnmatch patterns, e.g. ``"sem_seg_head.*"``
    for a new decode head) are exempt when weights initialise a model (``load``,
    ``resume_or_load(resume=False)``); resuming a run from its own last checkpoint
    (``resume_or_load(resume=True)``) requires every key. Checkpoint keys of modules that an
    encoder did not build, because they produce none of its requested outputs (e.g. stage 4 of
    a MiT asked for res2..res4 only), are accepted and left unused. ``.pth`` files are read with
    ``weights_only=True``; ``.pkl`` files are detectron2's model-zoo layout of numpy arrays,
    which only pickle reads.
    """

    def __init__(
        self, model: nn.Module, save_dir: str = "", *, optional_keys: Iterable[str] = (), **kwargs
    ):
        super().__init__(model, save_dir, **kwargs)
        self.optional_keys = tuple(optional_keys)
        self._resuming = False
        self._path = ""

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """detectron2's ``resume_or_load``; a resume from the last checkpoint requires every key."""
        self._resuming = resume and self.has_checkpoint()
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        self._path = path
        try:
            return super().load(path, *args, **kwargs)
        finally:  # detectron2 resets it only after a successful load, and asserts it on the next
            self._parsed_url_during_load = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            return super()._load_file(filename)
        except Exception as error:  # torch, zipfile and pickle each raise their own types
            raise CheckpointError(
                f"Cannot read the checkpoint {filename!r}: {type(error).__name__}: {error}\n"
                "The file is truncated (an interrupted download or copy), is not a PyTorch or "
                "detectron2 checkpoint, or holds objects other than tensors and plain containers "
                "(it is read with torch.load(weights_only=True)). Replace it, or convert an "
                "official checkpoint with tools/convert_pretrained.py."
            ) from error

    def _torch_load(self, f: str) -> Dict[str, Any]:
        return torch.load(f, map_location=torch.device("cpu"), weights_only=True)

    def _load_model(self, checkpoint: Dict[str, Any]):
        incompatible = super()._load_model(checkpoint)
        optional = () if self._resuming else self.optional_keys

        def required(key: str) -> bool:
            return not any(fnmatch.fnmatchcase(key, pattern) for pattern in optional)

        reshaped = {key for key, _, _ in incompatible.incorrect_shapes}  # also "missing"
        missing = [k for k in incompatible.missing_keys if required(k) and k not in reshaped]
        unbuilt = _unbuilt_keys(self.model)  # weights of modules this configuration needs not
        unexpected = [k for k in incompatible.unexpected_keys if required(k) and k not in unbuilt]
        shapes = [
            f"{key}: checkpoint {tuple(theirs)}, model {tuple(ours)}"
            for key, theirs, ours in incompatible.incorrect_shapes
            if required(key)
        ]
        if missing or unexpected or shapes:
            raise CheckpointError(self._mismatch_message(missing, unexpected, shapes))
        return incompatible  # detectron2 logs the exempt keys that did not load

    def _mismatch_message(
        self, missing: Sequence[str], unexpected: Sequence[str], shapes: Sequence[str]
    ) -> str:
        if self._resuming:
            exempt = "Resuming requires every key to match."
        elif self.optional_keys:
            exempt = f"Exempt keys (MODEL.WEIGHTS_OPTIONAL_KEYS): {list(self.optional_keys)}."
        else:
            exempt = "Every key must match (evaluation and inference load the whole model)."
        lines = [
            f"The checkpoint {self._path!r} does not fit the {type(self.model).__name__} model:",
            *_listing("model keys the checkpoint lacks", missing),
            *_listing("checkpoint keys the model lacks", unexpected),
            *_listing("tensors of another shape", shapes),
            "It was saved for another variant or architecture (compare MODEL.*.VARIANT, "
            "MODEL.HILA.STAGES and the heads with the run that wrote it; tools/convert_pretrained.py "
            f"prints the keys an official checkpoint needs), or it is incomplete. {exempt}",
        ]
        return "\n".join(lines)
