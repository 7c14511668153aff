"""Any timm encoder with ``feature_info`` as a detectron2 backbone, with or without HILA.

A module per concept, each depending only on those before it:

* ``model``: ``TimmEncoderError``, the timm model built from the config (``create``, ``plain``)
  and its outputs named by stride (``named_features``);
* ``hila_attachment``: the HILA pairs of the encoder's stages (``build_pairs``), hooked into the
  pruned encoder after a probe pass reads the stages' token layouts (``hook_pairs``), and the
  lower-level blocks that cannot take selective checkpointing
  (``check_selective_checkpointing``);
* ``freezing``: ``MODEL.TIMM.FREEZE_AT`` (``freeze``) and the freezing of the parameters that
  feed no output (``freeze_unused``);
* ``backbone``: ``TimmBackbone`` and its detectron2 builder ``build_timm_backbone``.
"""
from .backbone import TimmBackbone, build_timm_backbone
from .model import TimmEncoderError

__all__ = ["TimmBackbone", "TimmEncoderError", "build_timm_backbone"]
