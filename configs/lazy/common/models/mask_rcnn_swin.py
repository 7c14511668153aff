"""Mask R-CNN over an FPN (p2-p6) on a Swin encoder, optionally with HILA: the model of
mask_rcnn_mit.py (detectron2's lazy Mask R-CNN FPN, the values of Base-RCNN-FPN.yaml) with the
MiT bottom-up replaced by ``SwinTransformerBackbone`` at the values of
configs/coco/Base-Swin-T-Detection-1x.yaml (Swin-T, window 7, drop path 0.2, HILA off).

YAML key -> lazy key: as in mask_rcnn_mit.py, with
  MODEL.BACKBONE.NAME build_swin_fpn_backbone  model.backbone = FPN(bottom_up=
                                                   SwinTransformerBackbone)
  MODEL.HILA_D2_SWIN.{VARIANT, WINDOW_SIZE,    model.backbone.bottom_up.{variant, window_size,
      DROP_PATH_RATE, OUT_FEATURES}               drop_path_rate, out_features}
  MODEL.HILA.*                                 model.backbone.bottom_up.hila.* (lower case)
"""

from .mask_rcnn_mit import model, with_fpn_channels  # noqa: F401  (with_fpn_channels: for leaves)
from .parts import swin_encoder

model.backbone.bottom_up = swin_encoder(drop_path_rate=0.2)
