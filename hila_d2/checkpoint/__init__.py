"""Conversion of official checkpoints into detectron2 checkpoints of hila_d2 models.

``convert`` is the entry point (``FORMATS``, the table of source formats; ``detect_format``;
``convert_checkpoint``; ``SUPPORTED_FORMATS``); ``core`` holds the shared machinery (``Format``,
renaming, fitting), ``segformer``, ``swin`` and ``hatnet`` the converters of each family, ``hila``
the HILA pair names the first two use; ``files`` the readers of each file kind (.safetensors,
.bin, .pth, .pkl, a hub model directory with config.json) and the conversion report; ``loading``
the checkpointer that converts source files on load, refuses checkpoints that do not fit a model
and keeps the class names they carry (``class_names``); ``hub`` the weights named ``hf://ORG/REPO``
or ``timm://MODEL``, whose handler importing this package registers on detectron2's
``PathManager``.
"""

from .hub import HubPathHandler, register_hub_handler

__all__ = ["HubPathHandler", "register_hub_handler"]

register_hub_handler()
