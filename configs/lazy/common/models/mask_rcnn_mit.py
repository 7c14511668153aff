"""Mask R-CNN over an FPN (p2-p6) on a MiT encoder, optionally with HILA: detectron2's own lazy
Mask R-CNN FPN (its model zoo's common/models/mask_rcnn_fpn.py, the values of Base-RCNN-FPN.yaml)
with the ResNet replaced by MiT-B0 and the RGB input convention of Base-RCNN-FPN.yaml here.

YAML key -> lazy key (besides detectron2's own mapping of MODEL.RPN.*, MODEL.ROI_*.*):
  MODEL.BACKBONE.NAME build_mit_fpn_backbone  model.backbone = FPN(bottom_up=MixVisionTransformer)
  MODEL.MIT.*                                 model.backbone.bottom_up.* (lower case)
  MODEL.HILA.*                                model.backbone.bottom_up.hila.* (lower case)
  MODEL.FPN.{IN_FEATURES, OUT_CHANNELS, NORM}  model.backbone.{in_features, out_channels, norm}

detectron2 derives the RPN and ROI head widths from the FPN's output channels; here they are
written out: changing ``model.backbone.out_channels`` needs ``with_fpn_channels`` as well.
"""

from detectron2 import model_zoo
from detectron2.layers import ShapeSpec

from hila_d2.modeling.backbone.pyramid import STAGE_NAMES

from .parts import IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, mit_encoder


def with_fpn_channels(model, channels: int):
    """Set the FPN width of the Mask R-CNN config ``model`` (in place) and the input widths of the
    RPN head and the box and mask heads that read its levels."""
    model.backbone.out_channels = channels
    model.proposal_generator.head.in_channels = channels
    box_shape = model.roi_heads.box_head.input_shape
    model.roi_heads.box_head.input_shape = ShapeSpec(
        channels=channels, height=box_shape.height, width=box_shape.width
    )
    mask_shape = model.roi_heads.mask_head.input_shape
    model.roi_heads.mask_head.input_shape = ShapeSpec(
        channels=channels, height=mask_shape.height, width=mask_shape.width
    )
    return model


model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = mit_encoder()
model.backbone.in_features = list(STAGE_NAMES)
model.pixel_mean = IMAGENET_RGB_MEAN
model.pixel_std = IMAGENET_RGB_STD
model.input_format = "RGB"
