"""HILA Top-Down assignment maps (docs/design/hila.md §10): what a high-level token "owns", traced
down the hierarchy, and which high-level token owns a pixel.

In a pair's Top-Down attention every child's softmax runs over its (up to 4) candidate parents,
so the assignment ``w(child, parent)`` sums to 1 over the parents of each child. The maps use the
last Top-Down iteration of every pair, for image 0 of the batch, averaged over heads.

Conventions: stages are 1-based (1..4 = res2..res5) and stage ``s`` has a stride of
``2 ** (s + 1)`` pixels (4, 8, 16, 32, as in MiT and Swin); token locations are ``(row, col)``,
pixels ``(x, y)``; token ``(r, c)`` of stride ``S`` covers the pixels ``[S*c, S*(c+1)) x
[S*r, S*(r+1))`` of the (padded) network input.
"""
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from ..modeling.hila import pair_tag
from ..modeling.hila.attention import PATCH, candidate_parents
from .drawing import MIN_DRAW_SIZE, drawing_size, enlarge_image, enlarge_labels

__all__ = [
    "HILAAssignments",
    "chain_down",
    "compute_assignments",
    "owner_of_pixel",
    "patch_footprint",
    "render_map",
    "stage_stride",
    "step_down",
    "step_up",
]

Grid = Tuple[int, int]


def stage_stride(stage: int) -> int:
    """Pixels per token of a 1-based stage: 4, 8, 16, 32 for stages 1..4."""
    return 2 ** (stage + 1)


@dataclass(frozen=True)
class HILAAssignments:
    """The last Top-Down assignment of every HILA pair, for one image, averaged over heads.

    Attributes:
        weights: pair tag ("12", "23", "34") -> (Hc, Wc, 4) float32 on the lower stage's real
            token grid: ``weights[r, c, 2 * d + e]`` is how much child (r, c) is assigned to
            the parent (rows[r, d], cols[c, e]) of ``candidate_parents``; it sums to 1 over the
            last axis and is 0 for candidates outside the upper grid.
        grids: 1-based stage -> token grid (H, W), for both stages of every pair.
        input_size: (H, W) of the network input, in pixels.
    """

    weights: Dict[str, torch.Tensor]
    grids: Dict[int, Grid]
    input_size: Grid

    def chain(self) -> List[int]:
        """Stages of the contiguous run of pairs that ends at the highest pair, top first:
        S234 -> [4, 3, 2, 1], S3 -> [3, 2], S24 -> [4, 3]."""
        stages = [max(s for s in self.grids if pair_tag(s) in self.weights)]
        while pair_tag(stages[-1]) in self.weights:
            stages.append(stages[-1] - 1)
        return stages


def _upper_stage(tag: str) -> int:
    """The upper stage of a pair tag, inverting ``pair_tag``: "23" -> 3."""
    return int(tag[len(tag) // 2 :])


@torch.no_grad()
def compute_assignments(backbone: nn.Module, images: torch.Tensor) -> HILAAssignments:
    """Run ``backbone`` (in eval mode) on ``images`` (B, C, H, W) and return, for image 0, every
    pair's assignment from its last Top-Down iteration, averaged over heads.

    The pairs are ``backbone.hila[tag]`` (``HILAPair``); forward hooks on each pair's
    ``top_down`` block (the real lower grid) and its ``topdown_attn`` (the normalised, padded
    inputs of the last call) are removed again before returning.
    """
    pairs = getattr(backbone, "hila", None)
    if not pairs:
        raise ValueError(
            "The backbone has no HILA pairs (backbone.hila is empty): set MODEL.HILA.STAGES, "
            "e.g. [2, 3, 4], to visualise HILA attention"
        )
    children: Dict[str, Grid] = {}
    inputs: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    def keep_children(tag, module, args):
        children[tag] = tuple(args[1].shape[1:3])  # args: top, bottom (B, Hb, Wb, Cb)

    def keep_inputs(tag, module, args, output):
        inputs[tag] = (args[0][:1], args[1][:1])  # top (1, Ht, Wt, Ct), bottom (1, 2Ht, 2Wt, Cb)

    handles = []
    for tag, pair in pairs.items():
        handles.append(pair.top_down.register_forward_pre_hook(partial(keep_children, tag)))
        handles.append(
            pair.top_down.topdown_attn.register_forward_hook(partial(keep_inputs, tag))
        )
    try:
        backbone(images)
    finally:
        for handle in handles:
            handle.remove()

    weights, grids = {}, {}
    for tag, pair in pairs.items():
        if tag not in inputs:
            raise ValueError(
                f"HILA pair {tag} ran no Top-Down iteration (its upper stage has a single block "
                "or MODEL.HILA.STRIDES skips every Top-Down step): it has no assignment to show"
            )
        top, bottom = inputs[tag]
        hc, wc = children[tag]
        assignment = pair.top_down.topdown_attn.assignment(top, bottom)  # (1, 2Ht, 2Wt, h, 4)
        weights[tag] = assignment[0, :hc, :wc].float().mean(dim=-2)
        upper = _upper_stage(tag)
        grids[upper - 1], grids[upper] = (hc, wc), tuple(top.shape[1:3])
    return HILAAssignments(weights, grids, tuple(images.shape[-2:]))


def _candidate_index(weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Grid]:
    """For (Hc, Wc, 4) weights: the flat parent index ``row * Wp + col`` of every candidate,
    (Hc, Wc, 4) long (clamped into the grid), whether it exists, (Hc, Wc, 4) bool, and the
    parent grid (Hp, Wp) = (ceil(Hc / 2), ceil(Wc / 2)), the only size with Hc <= 2Hp <= Hc + 1."""
    (hc, wc), device = weights.shape[:2], weights.device
    parents = ((hc + 1) // 2, (wc + 1) // 2)
    rows, _, row_exists = candidate_parents(hc, parents[0], device)
    cols, _, col_exists = candidate_parents(wc, parents[1], device)
    index = rows[:, None, :, None] * parents[1] + cols[None, :, None, :]
    exists = row_exists[:, None, :, None] & col_exists[None, :, None, :]
    return index.flatten(2), exists.flatten(2), parents


def step_down(parent_map: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One level down: ``child[r, c] = sum_k weights[r, c, k] * parent_map[parent k of (r, c)]``.

    parent_map (Hp, Wp), weights (Hc, Wc, 4) of the pair -> (Hc, Wc).
    """
    index, exists, parents = _candidate_index(weights)
    if tuple(parent_map.shape) != parents:
        raise ValueError(
            f"A lower grid of {tuple(weights.shape[:2])} tokens has parents on a {parents} grid, "
            f"got a parent map of {tuple(parent_map.shape)}"
        )
    return (weights * exists * parent_map.flatten()[index]).sum(dim=-1)


def step_up(child_map: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One level up, the transpose of ``step_down``: ``parent[p] = sum over the children c of p
    of child_map[c] * weights[c, p]``; preserves the total mass.

    child_map (Hc, Wc), weights (Hc, Wc, 4) of the pair -> (ceil(Hc / 2), ceil(Wc / 2)).
    """
    index, exists, parents = _candidate_index(weights)
    mass = child_map[..., None] * weights * exists
    flat = mass.new_zeros(parents[0] * parents[1]).index_add_(0, index.flatten(), mass.flatten())
    return flat.view(parents)


def _one_hot(grid: Grid, token: Grid, assignments: HILAAssignments) -> torch.Tensor:
    """(H, W) float32 map, 1 at ``token`` (row, col), on the device of the assignments."""
    device = next(iter(assignments.weights.values())).device
    current = torch.zeros(grid, device=device)
    current[token] = 1.0
    return current


def chain_down(token: Grid, assignments: HILAAssignments) -> List[Tuple[int, torch.Tensor]]:
    """What the top-level token ``(row, col)`` owns on every lower stage of the chain.

    The map on stage t-1 is each child's assignment to the token; one stage further down each
    child gets ``sum_p w(child, p) * map(p)`` over its candidate parents p (the product along
    the parent -> child chain, summed over overlapping patches).

    Returns ``[(stage, (H, W) map), ...]`` from the stage below the chain's top to its bottom.
    """
    stages = assignments.chain()
    (height, width), (row, col) = assignments.grids[stages[0]], token
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(
            f"Token (row {row}, col {col}) lies outside the stage-{stages[0]} grid of "
            f"{height} rows x {width} columns"
        )
    current = _one_hot((height, width), (row, col), assignments)
    maps = []
    for upper in stages[:-1]:
        current = step_down(current, assignments.weights[pair_tag(upper)])
        maps.append((upper - 1, current))
    return maps


def owner_of_pixel(pixel: Grid, assignments: HILAAssignments) -> Grid:
    """The top-level token ``(row, col)`` that owns pixel ``(x, y)`` of the network input.

    The pixel's token on the chain's bottom stage (clamped into its grid) is carried up the
    chain with ``step_up`` to a distribution over top-level tokens; its argmax is the owner.
    """
    stages = assignments.chain()
    (x, y), (height, width) = pixel, assignments.input_size
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(
            f"Pixel (x {x}, y {y}) lies outside the network input of {width} x {height} pixels"
        )
    grid, stride = assignments.grids[stages[-1]], stage_stride(stages[-1])
    token = (min(y // stride, grid[0] - 1), min(x // stride, grid[1] - 1))
    current = _one_hot(grid, token, assignments)
    for upper in reversed(stages[:-1]):
        current = step_up(current, assignments.weights[pair_tag(upper)])
    row, col = divmod(int(current.argmax()), current.shape[1])
    return row, col


def patch_footprint(token: Grid, stage: int) -> Tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` (end exclusive, may extend past the image) of the 4x4 patch
    of children that the stage's token ``(row, col)`` owns on the stage below: children rows
    ``2*row - 1 .. 2*row + 2`` of stride S/2, i.e. ``y`` in ``[S*row - S/2, S*row + 3S/2)``, a
    2S x 2S square around the token's own S x S cell."""
    half = stage_stride(stage) // 2
    first_row, first_col = 2 * token[0] - 1, 2 * token[1] - 1
    return (
        half * first_col,
        half * first_row,
        half * (first_col + PATCH),
        half * (first_row + PATCH),
    )


def render_map(
    image: np.ndarray,
    level_map: torch.Tensor,
    stride: int,
    footprint: Tuple[int, int, int, int],
    min_draw_size: int = MIN_DRAW_SIZE,
) -> np.ndarray:
    """Blend a stage's map over the image and outline a footprint box in blue, drawn enlarged
    where the image is small.

    The (h, w) map is upsampled by nearest neighbour (each token paints its S x S cell, S =
    ``stride``), cropped to the image (the network input's padding is dropped) and normalised to
    its maximum over the image. Image and map are enlarged to (H', W') = ``drawing_size((H, W),
    min_draw_size)`` (``hila_d2.utils.drawing``: the image by cubic interpolation, the map by
    nearest neighbour), the map coloured with OpenCV's jet colormap and blended 50% over the
    image; then ``footprint`` (x0, y0, x1, y1) in image pixels, end exclusive, scaled to the
    drawing, is drawn 2 px wide in blue.

    image (H, W, 3) uint8 BGR with H <= h * S and W <= w * S -> (H', W', 3) uint8 BGR.
    """
    height, width = image.shape[:2]
    if level_map.shape[0] * stride < height or level_map.shape[1] * stride < width:
        raise ValueError(
            f"A {tuple(level_map.shape)} map of stride {stride} does not cover a "
            f"{height} x {width} image"
        )
    values = level_map.detach().float().cpu()
    values = values.repeat_interleave(stride, 0).repeat_interleave(stride, 1)[:height, :width]
    peak = float(values.max())
    size = drawing_size((height, width), min_draw_size)
    scaled = enlarge_labels(values / peak if peak > 0 else values, size).numpy()
    heat = cv2.applyColorMap(np.round(255 * scaled).astype(np.uint8), cv2.COLORMAP_JET)
    shown = np.ascontiguousarray(enlarge_image(image, size))
    out = cv2.addWeighted(shown, 0.5, heat, 0.5, 0.0)
    x0, y0, x1, y1 = footprint
    x_scale, y_scale = size[1] / width, size[0] / height
    top_left = (round(x0 * x_scale), round(y0 * y_scale))
    bottom_right = (round(x1 * x_scale) - 1, round(y1 * y_scale) - 1)
    cv2.rectangle(out, top_left, bottom_right, color=(255, 0, 0), thickness=2)
    return out
