"""The per-pixel loss of hila_d2's semantic heads and meta-architectures (SegFormer, UperNet and
its auxiliary head, HMSA)."""
import torch
import torch.nn.functional as F

__all__ = ["semantic_segmentation_loss"]


def semantic_segmentation_loss(
    logits: torch.Tensor, targets: torch.Tensor, ignore_value: int
) -> torch.Tensor:
    """Cross-entropy of logits (B, K, h, w) upsampled bilinearly to targets (B, H, W).

    Averaged over the non-ignored pixels; 0 (with a gradient path) when every pixel is ignored.
    Labels outside ``[0, K)`` other than ``ignore_value`` raise a ValueError.
    """
    num_classes = logits.shape[1]
    valid = targets != ignore_value
    if bool((targets[valid] >= num_classes).any()) or bool((targets[valid] < 0).any()):
        bad = torch.unique(targets[valid & ((targets >= num_classes) | (targets < 0))])
        raise ValueError(
            f"Semantic labels {bad.tolist()} are outside [0, {num_classes}) and are not the "
            f"ignore value {ignore_value}: check MODEL.SEM_SEG_HEAD.NUM_CLASSES and "
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE against the dataset's metadata"
        )
    logits = F.interpolate(
        logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False
    )
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="mean")
