"""HILA's options (``HILASettings``, the ``MODEL.HILA.*`` keys) and the names of its stage pairs
(``pair_tag``)."""

from dataclasses import dataclass
from typing import Tuple

__all__ = ["HILASettings", "pair_tag"]


def pair_tag(top_stage: int) -> str:
    """Official name of the pair whose upper stage is ``top_stage`` (1-based): 3 -> "23"."""
    return f"{top_stage - 1}{top_stage}"


@dataclass(frozen=True)
class HILASettings:
    """HILA options of an encoder (the ``MODEL.HILA.*`` keys; see hila_d2/config.py).

    ``stages`` lists the upper stage (1-based, 2..num_stages) of each pair; empty = HILA off.
    ``strides[t - 1]`` is the schedule stride of the pair whose upper stage is t.
    """

    stages: Tuple[int, ...] = ()
    strides: Tuple[int, ...] = (1, 1, 1, 1)
    mlp_ratio: float = 4.0
    bottom_mlp_ratio: float = 4.0
    num_heads: int = 1
    info_weights: Tuple[float, float] = (0.5, 0.5)
    parity_mode: bool = True
    init_bottom_from_lower_stage: bool = False
    checkpoint: bool = False

    @classmethod
    def from_config(cls, cfg) -> "HILASettings":
        hila = cfg.MODEL.HILA
        return cls(
            stages=tuple(hila.STAGES),
            strides=tuple(hila.STRIDES),
            mlp_ratio=hila.MLP_RATIO,
            bottom_mlp_ratio=hila.BOTTOM_MLP_RATIO,
            num_heads=hila.NUM_HEADS,
            info_weights=tuple(hila.INFO_WEIGHTS),
            parity_mode=hila.PARITY_MODE,
            init_bottom_from_lower_stage=hila.INIT_BOTTOM_FROM_LOWER_STAGE,
            checkpoint=hila.CHECKPOINT,
        )

    def check(self, num_stages: int) -> None:
        """ValueError naming the MODEL.HILA key that does not fit an encoder of ``num_stages``."""
        if any(t not in range(2, num_stages + 1) for t in self.stages) or len(
            set(self.stages)
        ) != len(self.stages):
            raise ValueError(
                f"MODEL.HILA.STAGES lists distinct upper stages in 2..{num_stages} (e.g. [3] or "
                f"[2, 3, 4]), got {list(self.stages)}"
            )
        if len(self.strides) != num_stages or any(s < 1 for s in self.strides):
            raise ValueError(
                f"MODEL.HILA.STRIDES needs {num_stages} entries >= 1, got {list(self.strides)}"
            )
        if len(self.info_weights) != 2:
            raise ValueError(
                f"MODEL.HILA.INFO_WEIGHTS is a pair (w0, w1), got {list(self.info_weights)}"
            )
