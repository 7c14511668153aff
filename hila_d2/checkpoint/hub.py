"""Weights named by hub name, for ``MODEL.WEIGHTS`` and ``tools/convert_pretrained.py``.

``hf://ORG/REPO`` names a Hugging Face model repository, read as a model directory
(``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``, ``files.HUB_WEIGHTS``);
``hf://ORG/REPO/FILE`` one file of it (FILE may hold slashes); either may end in ``@REVISION`` (a
branch, tag or commit). ``timm://MODEL[.TAG]`` names timm's pretrained weights of a model: the
hub repository (and file) of timm's pretrained config (``get_pretrained_cfg``). The files come
through ``huggingface_hub.hf_hub_download`` (only ``config.json`` and one weights file), into its
cache, with its environment read when a name is resolved: ``HF_HUB_CACHE`` (or ``HF_HOME``),
``HF_HUB_OFFLINE`` (the cache only), ``HF_TOKEN`` (private and gated repositories).

``HubPathHandler`` serves both prefixes to an iopath ``PathManager``; importing
``hila_d2.checkpoint`` registers it on detectron2's (``register_hub_handler``), so
``PathManager.get_local_path(name)`` gives the cached file or snapshot directory.
"""

import logging
import os
from dataclasses import dataclass
from typing import List, Optional

from iopath.common.file_io import PathHandler

from .files import CONFIG_JSON, HUB_WEIGHTS

__all__ = [
    "HF_PREFIX",
    "TIMM_PREFIX",
    "HubName",
    "HubPathHandler",
    "HubWeightsError",
    "HubWeightsNotFoundError",
    "hub_local_path",
    "is_hub_name",
    "parse_hf_name",
    "register_hub_handler",
    "timm_hub_name",
]

HF_PREFIX = "hf://"
TIMM_PREFIX = "timm://"
_HF_FORMS = (
    "hf://ORG/REPO (a model repository: config.json and model.safetensors or pytorch_model.bin) "
    "or hf://ORG/REPO/FILE (one file), each with an optional @REVISION, e.g. hf://nvidia/mit-b0"
)

logger = logging.getLogger(__name__)


class HubWeightsError(ValueError):
    """A hub name that is malformed or names no weights that can be loaded."""


class HubWeightsNotFoundError(HubWeightsError, FileNotFoundError):
    """Hub weights that neither the hub nor the local cache has (offline and not cached, the hub
    unreachable, or no such repository, revision or file)."""


def is_hub_name(path) -> bool:
    """Whether ``path`` is a str starting with ``hf://`` or ``timm://``."""
    return isinstance(path, str) and path.startswith((HF_PREFIX, TIMM_PREFIX))


@dataclass(frozen=True)
class HubName:
    """A parsed hub name: ``repo_id`` ("ORG/REPO"), ``filename`` (None: the repository as a model
    directory), ``revision`` (None: the default branch), ``name`` (as the user wrote it)."""

    repo_id: str
    filename: Optional[str] = None
    revision: Optional[str] = None
    name: str = ""

    @property
    def hf(self) -> str:
        """The ``hf://`` name of the same weights."""
        file = f"/{self.filename}" if self.filename else ""
        revision = f"@{self.revision}" if self.revision else ""
        return f"{HF_PREFIX}{self.repo_id}{file}{revision}"

    @property
    def shown(self) -> str:
        """``name``, followed by its ``hf://`` name where they differ (a timm name)."""
        return self.name if self.name == self.hf else f"{self.name} ({self.hf})"


def parse_hf_name(name: str) -> HubName:
    """``hf://ORG/REPO[/FILE][@REVISION]`` -> ``HubName``; HubWeightsError naming the problem."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    rest = name[len(HF_PREFIX) :] if name.startswith(HF_PREFIX) else name
    if rest.count("@") > 1:
        raise HubWeightsError(f"{name!r}: more than one '@'; a hub name is {_HF_FORMS}")
    rest, _, revision = rest.partition("@")
    if "@" in name and not revision:
        raise HubWeightsError(f"{name!r}: nothing after '@'; a hub name is {_HF_FORMS}")
    parts = rest[:-1].split("/") if rest.endswith("/") else rest.split("/")
    if len(parts) < 2 or not all(parts):
        raise HubWeightsError(f"{name!r} names no repository (ORG/REPO); a hub name is {_HF_FORMS}")
    repo_id = "/".join(parts[:2])
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubWeightsError(f"{name!r}: {error}") from None
    return HubName(repo_id, "/".join(parts[2:]) or None, revision or None, name)


def timm_hub_name(name: str) -> HubName:
    """``timm://MODEL[.TAG][@REVISION]`` -> the ``HubName`` of timm's pretrained config for it
    (its ``hf_hub_id`` and ``hf_hub_filename``); HubWeightsError for unknown models and tags,
    and for configs that name only a URL."""
    import timm.models

    rest = name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name
    model, _, revision = rest.partition("@")
    listing = "timm.list_pretrained() lists the names with weights"
    if not model or "/" in model:
        raise HubWeightsError(
            f"{name!r}: a timm name is timm://MODEL or timm://MODEL.TAG, e.g. "
            f"timm://swin_tiny_patch4_window7_224 (a hub repository is hf://ORG/REPO); {listing}"
        )
    architecture = model.split(".")[0]
    try:
        cfg = timm.models.get_pretrained_cfg(model)
    except RuntimeError as error:  # a known architecture, an unknown tag
        tags = timm.models.list_pretrained(f"{architecture}.*")
        raise HubWeightsError(
            f"{name!r}: {error} timm's weights of it: {', '.join(tags) or 'none'}"
        ) from None
    if cfg is None:
        what = "pretrained weights for" if timm.models.is_model(architecture) else "model"
        raise HubWeightsError(
            f"{name!r}: timm has no {what} {architecture!r}; {listing} (e.g. "
            "timm.list_pretrained('swin_*'))"
        )
    if not cfg.hf_hub_id:
        raise HubWeightsError(
            f"{name!r}: timm's pretrained config names no Hugging Face hub repository for it, "
            f"only the URL {cfg.url or '(none)'}: download that file and pass its path"
        )
    repo_id, _, cfg_revision = cfg.hf_hub_id.partition("@")
    return HubName(repo_id, cfg.hf_hub_filename or None, revision or cfg_revision or None, name)


def _env_true(value: str) -> bool:
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, else as huggingface_hub read
    it at import."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return _env_true(value) if value is not None else bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> Optional[str]:
    """The hub cache that the environment names now (``HF_HUB_CACHE``, the older
    ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME``/hub); None: huggingface_hub's own default."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return os.path.expandvars(os.path.expanduser(os.environ[variable]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return None


def _not_cached(hub: HubName, files: List[str], error: Exception) -> HubWeightsNotFoundError:
    from huggingface_hub import constants

    cache = _cache_dir() or constants.HF_HUB_CACHE
    if _offline():
        why = "HF_HUB_OFFLINE is set"
    else:
        cause = error.__cause__ or error
        first = (str(cause).splitlines() or [""])[0]
        why = f"the hub could not be reached ({type(cause).__name__}: {first})"
    revision = f" --revision {hub.revision}" if hub.revision else ""
    other = f", {HUB_WEIGHTS[1]} where it has no {HUB_WEIGHTS[0]}" if hub.filename is None else ""
    return HubWeightsNotFoundError(
        f"{hub.shown} is not in the Hugging Face cache {cache} and {why}. Fetch it once online "
        f"(the same name, or `hf download {hub.repo_id} {' '.join(files)}{revision}`{other}; "
        "`huggingface-cli download` before huggingface_hub 1.0), or download the file(s) and "
        "pass their local path instead"
    )


def _download(hub: HubName, filename: str, revision: Optional[str], force: bool) -> str:
    """``hf_hub_download`` of one file of ``hub``'s repository: its path in the cache. Where
    neither the hub nor the cache has it, the hub's ``LocalEntryNotFoundError`` (not cached and
    offline or unreachable) or ``EntryNotFoundError`` (no such file); HubWeightsNotFoundError for
    a repository or revision the hub does not have (or not for this token)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline()
    try:
        return hf_hub_download(
            hub.repo_id,
            filename,
            revision=revision,
            cache_dir=_cache_dir(),
            local_files_only=offline,
            force_download=force and not offline,
        )
    except (LocalEntryNotFoundError, EntryNotFoundError):
        raise
    except GatedRepoError:
        raise HubWeightsNotFoundError(
            f"{hub.shown}: the repository {hub.repo_id} is gated: accept its terms on "
            f"https://huggingface.co/{hub.repo_id}, then log in (`hf auth login`) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise HubWeightsNotFoundError(
            f"{hub.shown}: the Hugging Face hub has no repository {hub.repo_id} (or it is private: "
            "log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise HubWeightsNotFoundError(
            f"{hub.shown}: the repository {hub.repo_id} has no revision {revision!r}"
        ) from None


def _resolve(hub: HubName, force: bool, need_config: bool) -> str:
    """The cached file (``hub.filename``) or snapshot directory of ``hub`` (config.json and the
    first of ``HUB_WEIGHTS`` in the repository; with ``need_config`` False and no config.json, that
    weights file)."""
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    if hub.filename:
        try:
            return _download(hub, hub.filename, hub.revision, force)
        except LocalEntryNotFoundError as error:
            raise _not_cached(hub, [hub.filename], error) from None
        except EntryNotFoundError:
            raise HubWeightsNotFoundError(
                f"{hub.shown}: the repository {hub.repo_id} has no file {hub.filename!r}"
            ) from None
    revision, config = hub.revision, None
    try:
        config = _download(hub, CONFIG_JSON, revision, force)
        revision = os.path.basename(os.path.dirname(config))  # the commit: weights of the same
    except LocalEntryNotFoundError as error:
        raise _not_cached(hub, [CONFIG_JSON, HUB_WEIGHTS[0]], error) from None
    except EntryNotFoundError:
        if need_config:
            raise HubWeightsNotFoundError(
                f"{hub.shown}: the repository {hub.repo_id} has no {CONFIG_JSON}, so it is no "
                f"model directory: name its weights file, hf://{hub.repo_id}/FILE"
            ) from None
    uncached = None
    for weights in HUB_WEIGHTS:
        try:
            path = _download(hub, weights, revision, force)
        except LocalEntryNotFoundError as error:
            uncached = uncached or error
            continue
        except EntryNotFoundError:
            continue
        return os.path.dirname(path) if config else path
    if uncached is not None:
        raise _not_cached(hub, [CONFIG_JSON, HUB_WEIGHTS[0]], uncached)
    raise HubWeightsNotFoundError(
        f"{hub.shown}: the repository {hub.repo_id} has neither {' nor '.join(HUB_WEIGHTS)}: name "
        f"its weights file, hf://{hub.repo_id}/FILE"
    )


def hub_local_path(name: str, force: bool = False) -> str:
    """The local path of the hub name ``name``, downloaded into the hub cache where needed: a
    file for ``hf://ORG/REPO/FILE`` (and a timm config naming a file), else the snapshot
    directory (config.json beside the weights). Logs the name and the path. ``force``: download
    again (not offline). HubWeightsError (HubWeightsNotFoundError for weights neither the hub nor
    the cache has) naming the problem and its fix."""
    if name.startswith(TIMM_PREFIX):
        hub = timm_hub_name(name)
    elif name.startswith(HF_PREFIX):
        hub = parse_hf_name(name)
    else:
        raise HubWeightsError(f"{name!r} is no hub name (hf://... or timm://...)")
    path = _resolve(hub, force, need_config=name.startswith(HF_PREFIX))
    logger.info(f"{hub.shown} resolved to {path}")
    return path


class HubPathHandler(PathHandler):
    """iopath handler of ``hf://`` and ``timm://`` names (``hub_local_path``), read-only.
    ``exists``, ``isfile`` and ``isdir`` resolve the name (downloading it where needed) and are
    False where it does not resolve."""

    PREFIXES = (HF_PREFIX, TIMM_PREFIX)

    def _get_supported_prefixes(self) -> List[str]:
        return list(self.PREFIXES)

    def _get_local_path(self, path: str, force: bool = False, **kwargs) -> str:
        self._check_kwargs(kwargs)
        return hub_local_path(path, force=force)

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs):
        self._check_kwargs(kwargs)
        if any(c in mode for c in "wax+"):
            raise ValueError(f"{path!r}: hub names are read-only, cannot open with mode {mode!r}")
        local = hub_local_path(path)
        if os.path.isdir(local):
            raise IsADirectoryError(
                f"{path!r} names a repository ({local}), not a file: open hf://ORG/REPO/FILE"
            )
        return open(local, mode, buffering=buffering)

    def _resolves(self, path: str, check, kwargs) -> bool:
        self._check_kwargs(kwargs)
        try:
            return check(hub_local_path(path))
        except HubWeightsError:
            return False

    def _exists(self, path: str, **kwargs) -> bool:
        return self._resolves(path, os.path.exists, kwargs)

    def _isfile(self, path: str, **kwargs) -> bool:
        return self._resolves(path, os.path.isfile, kwargs)

    def _isdir(self, path: str, **kwargs) -> bool:
        return self._resolves(path, os.path.isdir, kwargs)


def register_hub_handler(path_manager=None) -> Optional[PathHandler]:
    """Register a ``HubPathHandler`` on ``path_manager`` (default: detectron2's ``PathManager``)
    unless one serves its prefixes already (so calling it again does nothing); the handler
    serving them. Prefixes that another handler class holds are left to it, with a warning (and
    None returned)."""
    if path_manager is None:
        from detectron2.utils.file_io import PathManager as path_manager

    def ours(handler) -> bool:  # by name: a reloaded module's class is another object
        kind = type(handler)
        return (kind.__module__, kind.__qualname__) == (__name__, HubPathHandler.__qualname__)

    handlers = getattr(path_manager, "_path_handlers", {})
    held = {p: handlers[p] for p in HubPathHandler.PREFIXES if p in handlers}
    if len(held) == len(HubPathHandler.PREFIXES) and all(map(ours, held.values())):
        return held[HF_PREFIX]
    others = [f"{p} ({type(h).__name__})" for p, h in held.items() if not ours(h)]
    if others:
        logger.warning(f"Not registering hila_d2's hub names: other handlers serve {others}")
        return None
    handler = HubPathHandler()
    path_manager.register_handler(handler, allow_override=True)  # over our own, reloaded
    return handler
