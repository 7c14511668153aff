"""Loading checkpoints into a model with the checks that detectron2 only logs.

detectron2's ``DetectionCheckpointer`` loads whatever fits and logs the rest, so a checkpoint for
another variant or with missing keys trains or evaluates a half-random model without an error.
``ValidatingCheckpointer`` raises a ``CheckpointError`` instead, listing what is wrong. It also
keeps the class names a checkpoint carries (``class_names``) and writes them into the checkpoints
it saves.
"""
import fnmatch
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..modeling.backbone.timm import TimmBackbone
from ..modeling.hila import init_bottom_blocks_from_lower_stage
from .convert import detect_format
from .core import PREDICTOR, state_dict_of
from .files import (
    CLASS_NAMES,
    HUB_WEIGHTS,
    SourceFile,
    as_tensors,
    checkpoint_data,
    convert_source,
    read_checkpoint,
    report_lines,
)
from .hub import is_hub_name
from .swin import swin_window_size

__all__ = ["CheckpointError", "ValidatingCheckpointer"]

_SHOWN = 10  # keys listed per kind of problem
# file kinds that only a converter reads (detectron2 reads .pth and .pkl itself)
_SOURCE_ONLY = (".safetensors", ".bin")


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


def _timm_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor]
) -> Optional[Dict[str, torch.Tensor]]:
    """``state`` under ``model``'s names when it is a timm checkpoint of the timm encoder of a
    ``TimmBackbone`` in ``model`` (``TimmBackbone.timm_state_dict``); None otherwise."""
    for name, module in model.named_modules():
        if isinstance(module, TimmBackbone):
            found = module.timm_state_dict(state)
            if found is not None:
                return {f"{name}.{key}": value for key, value in found.items()}
    return None


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

    ``MODEL.WEIGHTS`` may also name a file of any ``SUPPORTED_FORMATS`` source format (an official
    release, transformers or timm weights: ``.pth``, ``.pkl``, ``.bin``, ``.safetensors``, or a
    model directory with ``config.json``): it is converted in memory as
    ``tools/convert_pretrained.py`` would (``hila_d2.checkpoint.files``, the same report logged,
    Swin tables resized to the model's window, FPN models' ``backbone.bottom_up`` names), and
    the same errors refuse it before any weight is loaded. A file holding any key of the model
    loads as before, unconverted. A hub name (``hf://ORG/REPO[/FILE][@REVISION]``,
    ``timm://MODEL``: ``hila_d2.checkpoint.hub``) is first resolved to its file or model
    directory in the Hugging Face cache, downloaded where needed; a name that does not resolve
    raises a ``HubWeightsError`` (``HubWeightsNotFoundError`` offline and not cached).

    Class names: a checkpoint's top-level ``"stuff_classes"`` entry (``CLASS_NAMES``: a list of
    str, written by ``tools/convert_pretrained.py`` and by this checkpointer's ``save``; a hub
    directory converted on load has its ``config.json``'s ``id2label``) names the rows of its
    classifier ``sem_seg_head.predictor``. After a load, ``class_names`` holds them where that
    classifier initialised the model's; it is None where the checkpoint has none or the model's
    classifier did not come from it (a new head: an exempt key missing or of another class
    count). Names whose count is not the model's class count are a ``CheckpointError``. ``save``
    writes ``class_names`` into the checkpoints of the run, so a resumed or evaluated fine-tuned
    model keeps them. ``loaded_path``: the path given to the last ``load``.

    "No HILA pretraining" (``MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE``): after loading, a HILA
    pair's lower-level block that the checkpoint lacks starts as a copy of the lower stage's last
    block (``init_bottom_blocks_from_lower_stage``), and its keys are no longer missing.
    """

    def __init__(
        self, model: nn.Module, save_dir: str = "", *, optional_keys: Iterable[str] = (), **kwargs
    ):
        super().__init__(model, save_dir, **kwargs)
        self.optional_keys = tuple(optional_keys)
        self.class_names: Optional[List[str]] = None
        self.loaded_path = ""
        self._resuming = False
        self._converted_from = None  # (format, config keys) of a file converted on load

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """detectron2's ``resume_or_load``; a resume from the last checkpoint requires every key."""
        self._resuming = resume and self.has_checkpoint()
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        """detectron2's ``load``: the checkpoint's data other than the model and the
        checkpointables (e.g. ``iteration``, ``CLASS_NAMES``); sets ``class_names``."""
        self.loaded_path = path
        self.class_names = None
        self._converted_from = None
        if is_hub_name(path):  # the cached file or snapshot directory (HubPathHandler)
            path = self.path_manager.get_local_path(path)
        if path and os.path.isdir(path):  # a model directory: its weights file, config.json beside
            found = [os.path.join(path, n) for n in HUB_WEIGHTS]
            found = [f for f in found if os.path.isfile(f)]
            if not found:
                raise CheckpointError(
                    f"Cannot read the checkpoint {path!r}: a model directory holds config.json "
                    f"and one of {', '.join(HUB_WEIGHTS)}; found {sorted(os.listdir(path))[:10]}"
                )
            path = found[0]
        try:
            return super().load(path, *args, **kwargs)
        finally:  # detectron2 resets it only after a successful load, and asserts it on the next
            self._parsed_url_during_load = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(_SOURCE_ONLY):
            return self._converted(filename, None)
        try:
            loaded = super()._load_file(filename)
        except Exception as error:  # torch, zipfile and pickle each raise their own types
            raise CheckpointError(
                f"Cannot read the checkpoint {filename!r}: {type(error).__name__}: {error}\n"
                "The file is truncated (an interrupted download or copy), is not a PyTorch or "
                "detectron2 checkpoint, or holds objects other than tensors and plain containers "
                "(it is read with torch.load(weights_only=True)). Replace it, or convert an "
                "official checkpoint with tools/convert_pretrained.py."
            ) from error
        return self._converted(filename, loaded)

    def _converted(self, filename: str, loaded: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """``loaded`` as it is when it holds keys of the model (detectron2/hila_d2 layout) or no
        supported source format; else converted in memory (``hila_d2.checkpoint.files``), with
        the converter's report logged. ``loaded`` None: read ``filename`` (a .safetensors file or
        a model directory) first. Unreadable or unconvertible files raise a CheckpointError."""
        if loaded is None:
            try:
                source = read_checkpoint(filename)
            except ValueError as error:
                raise CheckpointError(f"Cannot read the checkpoint: {error}") from error
            loaded = {"model": state_dict_of(source.obj)}
        else:
            source = SourceFile(as_tensors(state_dict_of(loaded.get("model"))), filename)
        state = state_dict_of(source.obj)
        if not isinstance(state, Mapping) or not state:
            return loaded
        own = self.model.state_dict().keys()
        if any(key in own for key in state):
            return loaded  # detectron2 / hila_d2 layout: loads as before
        timm_weights = _timm_weights(self.model, state)
        if timm_weights is not None:
            self.logger.info(f"Loading {filename!r} as timm weights of the model's timm encoder")
            return {**loaded, "model": timm_weights}
        try:
            source_format = detect_format(state)
        except ValueError as error:
            if filename.endswith(_SOURCE_ONLY):
                raise CheckpointError(
                    f"Cannot convert the checkpoint {filename!r}: {error}"
                ) from error
            return loaded  # as before: _load_model lists what does not fit
        window = None
        if source_format.resizes_window:
            window = swin_window_size(self.model.state_dict())  # None: no Swin in the model
        try:
            result = convert_source(source, window_size=window, source_format=source_format)
        except ValueError as error:
            raise CheckpointError(f"Cannot convert the checkpoint {error}") from error
        model = self._model_names(result.model)
        self.logger.info(
            f"Converted {filename!r} in memory:\n" + "\n".join(report_lines(result))
        )
        self._converted_from = (result.source_format, result.config)
        return checkpoint_data(
            result, model, f"hila_d2 in-memory conversion ({result.source_format})"
        )

    def _model_names(self, converted: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``converted`` (``backbone.…`` names) under ``backbone.bottom_up.…`` when the model is
        an FPN whose encoder is its bottom_up, else as it is."""
        own = self.model.state_dict().keys()
        fpn = "backbone.bottom_up."
        if any(k in own for k in converted) or not any(k.startswith(fpn) for k in own):
            return converted
        return {
            (fpn + k[len("backbone.") :] if k.startswith("backbone.") else k): v
            for k, v in converted.items()
        }

    def _torch_load(self, f: str) -> Dict[str, Any]:
        return torch.load(f, map_location=torch.device("cpu"), weights_only=True)

    def _load_model(self, checkpoint: Dict[str, Any]):
        # detectron2 loads every tensor that fits before the checks below can refuse the rest:
        # keep the model's state to put back, so that a refused checkpoint loads nothing
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        incompatible = super()._load_model(checkpoint)
        try:
            for key in init_bottom_blocks_from_lower_stage(self.model, incompatible.missing_keys):
                incompatible.missing_keys.remove(key)
            self._check_incompatible(incompatible)
            self.class_names = self._class_names(
                checkpoint.get(CLASS_NAMES), backup.get(PREDICTOR), incompatible.missing_keys
            )
        except ValueError:  # a CheckpointError, or a lower-level block that cannot be copied
            self.model.load_state_dict(backup)
            raise
        return incompatible  # detectron2 logs the exempt keys that did not load

    def _class_names(
        self, names: Any, classifier: Optional[torch.Tensor], missing: Sequence[str]
    ) -> Optional[List[str]]:
        """``names`` (the checkpoint's ``CLASS_NAMES`` entry) where they name the classes of the
        model's ``classifier`` (``PREDICTOR``, (K, C, 1, 1)) and it loaded from the checkpoint
        (not in ``missing``); None where there are none or the model's classifier is new.
        CheckpointError for names that are not a list of str or not K of them."""
        if names is None:
            return None
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(
                f"The checkpoint {self.loaded_path!r} has a {CLASS_NAMES!r} entry that is not a "
                f"list of class names (str): {names!r:.200}. Write the names as a list, or "
                "delete the entry."
            )
        if classifier is None or PREDICTOR in missing:
            self.logger.info(
                f"Not using the {len(names)} class names of {self.loaded_path!r}: the model's "
                f"classifier {PREDICTOR} is not loaded from it (a new head)"
            )
            return None
        if len(names) != classifier.shape[0]:
            raise CheckpointError(
                f"The checkpoint {self.loaded_path!r} names {len(names)} classes in its "
                f"{CLASS_NAMES!r} entry, but its classifier and the model's ({PREDICTOR}, "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES) have {classifier.shape[0]}: the names do not "
                f"belong to these weights. Correct or delete the {CLASS_NAMES!r} entry (for a "
                "converted hub model, check id2label in its config.json and convert it again)."
            )
        return list(names)

    def save(self, name: str, **kwargs: Any) -> None:
        """detectron2's ``save``; the checkpoint also holds ``class_names`` (``CLASS_NAMES``)
        where the loaded weights named the model's classes."""
        if self.class_names is not None:
            kwargs.setdefault(CLASS_NAMES, self.class_names)
        super().save(name, **kwargs)

    def _check_incompatible(self, incompatible):
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
            f"The checkpoint {self.loaded_path!r} does not fit the "
            f"{type(self.model).__name__} model:",
            *(
                [
                    f"  it was converted from {self._converted_from[0]} and fits a model of "
                    + ", ".join(f"{k} {v}" for k, v in self._converted_from[1].items())
                ]
                if self._converted_from
                else []
            ),
            *_listing("model keys the checkpoint lacks", missing),
            *_listing("checkpoint keys the model lacks", unexpected),
            *_listing("tensors of another shape", shapes),
            "It was saved for another variant or architecture (compare MODEL.*.VARIANT, "
            "MODEL.HILA.STAGES and the heads with the run that wrote it; tools/convert_pretrained.py "
            f"prints the keys an official checkpoint needs), or it is incomplete. {exempt}",
        ]
        return "\n".join(lines)
