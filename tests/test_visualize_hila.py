"""HILA assignment maps (docs/design/hila.md §10): the capture of the last Top-Down iteration, the
chains down and up the hierarchy against loop references, the rendering (small images enlarged,
hila_d2.utils.drawing) and the CLI tools/visualize_hila.py."""
import math
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.hila import HILASettings, pair_tag
from hila_d2.utils.hila_attention_maps import (
    HILAAssignments,
    chain_down,
    compute_assignments,
    owner_of_pixel,
    patch_footprint,
    render_map,
    step_down,
    step_up,
)
from project_config import REPO, load_script

CONFIG = "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml"
S234 = ("MODEL.HILA.STAGES", "[2, 3, 4]", "MODEL.DEVICE", "cpu")


def sharpened_mit(**kwargs) -> MixVisionTransformer:
    """A random B0 + HILA S234 whose Top-Down weights are far from uniform (random position
    biases and larger queries), so that indexing mistakes change the numbers."""
    torch.manual_seed(0)
    model = MixVisionTransformer(variant="B0", hila=HILASettings(stages=(2, 3, 4)), **kwargs)
    with torch.no_grad():
        for pair in model.hila.values():
            attn = pair.top_down.topdown_attn
            attn.relative_position_bias_table.normal_(0.0, 1.0)
            attn.q.weight.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return sharpened_mit()


@pytest.fixture(scope="module", params=[(64, 96), (65, 97)], ids=["even", "odd"])
def assignments(request, model):
    torch.manual_seed(1)
    return compute_assignments(model, torch.randn(1, 3, *request.param))


# ---- loop references: every parent (i, j) owns children rows 2i-1..2i+2, cols 2j-1..2j+2


def candidate_rows(child: int) -> list:
    """The 2 parent indices (in range or not) whose patch covers ``child``, in candidate order."""
    return [i for i in range(-1, child + 2) if 2 * i - 1 <= child <= 2 * i + 2]


def loop_step_down(parent_map, weights):
    (hc, wc), (hp, wp) = weights.shape[:2], parent_map.shape
    w, parent = weights.tolist(), parent_map.tolist()
    out = [[0.0] * wc for _ in range(hc)]
    for r in range(hc):
        for c in range(wc):
            for d, i in enumerate(candidate_rows(r)):
                for e, j in enumerate(candidate_rows(c)):
                    if 0 <= i < hp and 0 <= j < wp:
                        out[r][c] += w[r][c][2 * d + e] * parent[i][j]
    return torch.tensor(out, dtype=torch.float64)


def loop_step_up(child_map, weights):
    hc, wc = weights.shape[:2]
    hp, wp = math.ceil(hc / 2), math.ceil(wc / 2)
    w, child = weights.tolist(), child_map.tolist()
    out = [[0.0] * wp for _ in range(hp)]
    for i in range(hp):
        for j in range(wp):
            for r in range(max(2 * i - 1, 0), min(2 * i + 3, hc)):
                for c in range(max(2 * j - 1, 0), min(2 * j + 3, wc)):
                    k = 2 * candidate_rows(r).index(i) + candidate_rows(c).index(j)
                    out[i][j] += child[r][c] * w[r][c][k]
    return torch.tensor(out, dtype=torch.float64)


def random_weights(hc: int, wc: int) -> torch.Tensor:
    """(hc, wc, 4) random assignments: a softmax over the candidates that exist."""
    hp, wp = math.ceil(hc / 2), math.ceil(wc / 2)
    logits = torch.randn(hc, wc, 4) * 2
    for r in range(hc):
        for c in range(wc):
            for d, i in enumerate(candidate_rows(r)):
                for e, j in enumerate(candidate_rows(c)):
                    if not (0 <= i < hp and 0 <= j < wp):
                        logits[r, c, 2 * d + e] = float("-inf")
    return logits.softmax(dim=-1)


# ---- library


def test_grids_are_the_real_token_grids_and_weights_sum_to_one(assignments):
    """The padded child row/column of odd sizes is cropped: stage s has ceil(H / 2^(s+1)) rows."""
    height, width = assignments.input_size
    assert assignments.chain() == [4, 3, 2, 1]
    for stage in range(1, 5):
        stride = 2 ** (stage + 1)
        assert assignments.grids[stage] == (math.ceil(height / stride), math.ceil(width / stride))
    for top in (2, 3, 4):
        weights = assignments.weights[pair_tag(top)]
        assert weights.shape == (*assignments.grids[top - 1], 4)
        assert weights.dtype == torch.float32
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))


def test_chain_down_summed_over_every_top_token_is_one_everywhere(assignments):
    """Each child's weights sum to 1 over its parents, so the maps of all top tokens partition
    every level; a wrong parent index breaks this at the borders or the odd row/column."""
    rows, cols = assignments.grids[4]
    totals = {}
    for row in range(rows):
        for col in range(cols):
            for stage, level_map in chain_down((row, col), assignments):
                assert level_map.shape == assignments.grids[stage]
                assert level_map.min() >= 0
                totals[stage] = totals.get(stage, 0) + level_map
    assert sorted(totals) == [1, 2, 3]
    for stage, total in totals.items():
        torch.testing.assert_close(total, torch.ones(assignments.grids[stage]), msg=str(stage))


def test_chain_down_first_map_is_the_assignment_to_the_chosen_parent(assignments):
    """Stage 3 from stage-4 token (1, 2): children in its 4x4 patch carry their weight for it."""
    (stage, level_map), *_ = chain_down((1, 2), assignments)
    weights = assignments.weights["34"]
    assert stage == 3
    for r in range(level_map.shape[0]):
        for c in range(level_map.shape[1]):
            rows, cols = candidate_rows(r), candidate_rows(c)
            expected = (
                float(weights[r, c, 2 * rows.index(1) + cols.index(2)])
                if 1 in rows and 2 in cols
                else 0.0
            )
            assert float(level_map[r, c]) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("children", [(8, 12), (9, 13), (5, 7), (1, 2)])
def test_steps_match_the_loop_reference(children):
    torch.manual_seed(2)
    weights = random_weights(*children)
    parents = (math.ceil(children[0] / 2), math.ceil(children[1] / 2))
    parent_map, child_map = torch.rand(parents), torch.rand(children)
    down, up = step_down(parent_map, weights), step_up(child_map, weights)
    torch.testing.assert_close(down.double(), loop_step_down(parent_map, weights))
    torch.testing.assert_close(up.double(), loop_step_up(child_map, weights))
    # the upward step is the transpose of the downward one and conserves mass
    torch.testing.assert_close((down * child_map).sum(), (parent_map * up).sum())
    torch.testing.assert_close(up.sum(), child_map.sum())


def test_step_down_rejects_a_parent_map_of_the_wrong_grid():
    with pytest.raises(ValueError, match=r"parents on a \(3, 4\) grid"):
        step_down(torch.zeros(3, 3), random_weights(5, 7))


def test_owner_of_pixel_matches_the_loop_reference(assignments):
    """Pixel -> its stage-1 token (stride 4) -> carried up three pairs -> argmax."""
    height, width = assignments.input_size
    checked = 0
    for y in range(0, height, 5):
        for x in range(0, width, 7):
            mass = torch.zeros(assignments.grids[1], dtype=torch.float64)
            mass[y // 4, x // 4] = 1.0
            for top in (2, 3, 4):
                mass = loop_step_up(mass, assignments.weights[pair_tag(top)])
            assert float(mass.sum()) == pytest.approx(1.0)
            best = mass.flatten().topk(2).values
            if best[0] - best[1] < 1e-4:  # a near tie: either answer is right
                continue
            expected = divmod(int(mass.argmax()), mass.shape[1])
            assert owner_of_pixel((x, y), assignments) == expected, (x, y)
            checked += 1
    assert checked > 50


def test_owner_of_pixel_rejects_pixels_outside_the_input(assignments):
    height, width = assignments.input_size
    with pytest.raises(ValueError, match=f"{width} x {height} pixels"):
        owner_of_pixel((width, 0), assignments)


def test_assignment_is_the_last_top_down_iteration_of_the_forward_pass():
    """Depths (2, 2, 4, 2), stride 1: pair 23 runs Top-Down 3 times, 12 and 34 once each."""
    model = sharpened_mit(depths=(2, 2, 4, 2))
    calls = {tag: [] for tag in model.hila}
    handles = [
        pair.top_down.topdown_attn.register_forward_hook(
            lambda module, args, output, tag=tag: calls[tag].append(args)
        )
        for tag, pair in model.hila.items()
    ]
    torch.manual_seed(3)
    images = torch.randn(2, 3, 65, 97)
    assignments = compute_assignments(model, images)
    for handle in handles:
        handle.remove()
    assert {tag: len(c) for tag, c in calls.items()} == {"12": 1, "23": 3, "34": 1}
    recomputed = {}
    with torch.no_grad():
        for tag, pair in model.hila.items():
            hc, wc = assignments.grids[int(tag[0])]
            attn = pair.top_down.topdown_attn
            recomputed[tag] = [attn.assignment(*a)[0, :hc, :wc].mean(-2) for a in calls[tag]]
            torch.testing.assert_close(assignments.weights[tag], recomputed[tag][-1])
            assert not attn._forward_hooks and not pair.top_down._forward_pre_hooks  # removed
    # the three iterations of pair 23 differ, so matching the last one is a real check
    first, second, last = recomputed["23"]
    assert (last - first).abs().max() > 1e-3 and (last - second).abs().max() > 1e-3


def test_partial_chains_start_at_the_highest_pair():
    """S3 alone: one map on stage 2 for a stage-3 token; pairs 12 and 34: only 34 chains."""
    torch.manual_seed(0)
    s3 = MixVisionTransformer(variant="B0", hila=HILASettings(stages=(3,))).eval()
    assignments = compute_assignments(s3, torch.randn(1, 3, 64, 96))
    assert assignments.chain() == [3, 2]
    maps = chain_down((1, 2), assignments)
    assert [stage for stage, _ in maps] == [2]
    support = maps[0][1].nonzero().tolist()  # the 4x4 patch: rows 1..4, cols 3..6
    assert support == [[r, c] for r in range(1, 5) for c in range(3, 7)]
    s24 = HILAAssignments(
        {"12": random_weights(8, 12), "34": random_weights(4, 6)},
        {1: (8, 12), 2: (4, 6), 3: (4, 6), 4: (2, 3)},
        (32, 48),
    )
    assert s24.chain() == [4, 3]
    assert [stage for stage, _ in chain_down((1, 2), s24)] == [3]


def test_errors_name_the_config_key_and_the_grid(assignments):
    with pytest.raises(ValueError, match="MODEL.HILA.STAGES"):
        compute_assignments(MixVisionTransformer(variant="B0").eval(), torch.zeros(1, 3, 64, 64))
    rows, cols = assignments.grids[4]
    with pytest.raises(ValueError, match=f"stage-4 grid of {rows} rows x {cols} columns"):
        chain_down((rows, 0), assignments)


def test_patch_footprint_is_the_childrens_patch_at_the_lower_stride():
    """Stage-4 token (row 1, col 2): children rows 1..4, cols 3..6 of stride 16."""
    assert patch_footprint((1, 2), 4) == (48, 16, 112, 80)
    assert patch_footprint((0, 0), 2) == (-4, -4, 12, 12)


def test_render_map_upsamples_normalises_blends_and_outlines():
    image = np.full((10, 11, 3), 100, np.uint8)
    level_map = torch.zeros(3, 3)
    level_map[0, 0] = 0.2  # the maximum: normalised to 1
    out = render_map(image, level_map, 4, (4, 4, 12, 12), min_draw_size=0)
    jet = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_JET)[0]
    assert out.shape == (10, 11, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[1, 1], 50 + jet[1] / 2, atol=1)  # the token's 4x4 cell
    np.testing.assert_allclose(out[1, 9], 50 + jet[0] / 2, atol=1)  # a zero token
    assert out[4, 8].tolist() == [255, 0, 0]  # the top edge of the box, blue in BGR


def test_render_map_draws_small_images_enlarged():
    """min_draw_size 40: the 10x11 image is drawn at 40x44, its map the 4x nearest-neighbour
    enlargement of the map drawn at 10x11, the box at 4x its corners but still 2 px wide."""
    image = np.full((10, 11, 3), 100, np.uint8)  # constant: so is its cubic enlargement
    torch.manual_seed(4)
    level_map = torch.rand(3, 3)
    off_image = (-40, -40, -30, -30)  # a box outside the image: nothing outlined
    small = render_map(image, level_map, 4, off_image, min_draw_size=0)
    large = render_map(image, level_map, 4, off_image, min_draw_size=40)
    assert small.shape == (10, 11, 3) and large.shape == (40, 44, 3)
    np.testing.assert_array_equal(large, np.repeat(np.repeat(small, 4, axis=0), 4, axis=1))
    boxed = render_map(image, level_map, 4, (4, 4, 8, 8), min_draw_size=40)
    blue = (boxed == [255, 0, 0]).all(axis=2)
    assert blue[16, 24] and blue[24, 16] and blue[31, 24] and blue[24, 31]  # (16, 16, 32, 32)
    assert not blue[20, 24]  # a thin line, not the 10x11 drawing's line enlarged to 12 px


# ---- CLI


def load_tool():
    return load_script("tools/visualize_hila.py")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A constant grey 96x128 image: every colour in the PNGs comes from the maps and the box."""
    path = tmp_path_factory.mktemp("image") / "grey.png"
    cv2.imwrite(str(path), np.full((96, 128, 3), 128, np.uint8))
    return path


@pytest.mark.slow
def test_cli_writes_one_png_per_lower_stage(image_file, tmp_path):
    """--location and --pixel, run side by side; MIN_SIZE_TEST 128 resizes 96x128 to 128x171,
    drawn enlarged to 512x684 (--min-draw-size 512, the default) or at 128x171 (0)."""
    runs = {}
    for name, where in (
        ("location", ["--location", "2", "1"]),
        ("pixel", ["--pixel", "70", "40", "--min-draw-size", "0"]),
    ):
        command = [
            sys.executable, "tools/visualize_hila.py", "--config-file", CONFIG,
            "--input", str(image_file), "--output", str(tmp_path / name), *where, *S234,
        ]
        runs[name] = subprocess.Popen(  # one thread each: the two runs share the cores
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    for name, process in runs.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert "randomly initialised" in stderr
        if name == "location":
            x, y = 2, 1
        else:
            x, y = map(int, re.search(r"stage-4 token x=(\d+) y=(\d+)", stdout).groups())
        expected = [
            str(tmp_path / name / f"hila_stage{s}_from_stage4_x{x}_y{y}.png") for s in (3, 2, 1)
        ]
        assert [line for line in stdout.splitlines() if line.endswith(".png")] == expected
        for path in expected:
            png = cv2.imread(path)
            assert png.shape == ((512, 684, 3) if name == "location" else (128, 171, 3))
            # background (jet of 0 over grey), the blue box, and the map's colours
            assert len(np.unique(png.reshape(-1, 3), axis=0)) > 2, path


@pytest.mark.slow
def test_cli_errors(image_file, tmp_path):
    """In process (the subprocess wrapper turns the ValueError into "error: ..." and exit 1)."""
    tool = load_tool()
    args = ["--config-file", str(REPO / CONFIG), "--input", str(image_file)]
    args += ["--output", str(tmp_path)]
    with pytest.raises(ValueError, match="MODEL.HILA.STAGES"):
        tool.main([*args, "--location", "0", "0", "MODEL.HILA.STAGES", "[]", "MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=r"stage-4 token grid of 6 x 4"):
        tool.main([*args, "--location", "6", "0", *S234])
    with pytest.raises(ValueError, match=r"outside the 128 x 96 image"):
        tool.main([*args, "--pixel", "128", "0", *S234])
    with pytest.raises(SystemExit):  # exactly one of --location / --pixel
        tool.main([*args, "--location", "0", "0", "--pixel", "0", "0"])
    assert not list(tmp_path.iterdir())
