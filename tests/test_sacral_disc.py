"""Levels below the chain's end, L5-S1 above all, are named from the masks where the heatmaps stop (issue 19).

Few training scans label L5-S1, so its heatmap channel is weak on unseen scans, while the
disc segmentation, learnt from discs of every level, shows the disc: an unnamed mask
component of the next level's kind about half a level step below the chain's lowest
structure, on the chain's line and not a speck, is that level, one level at a time.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_ivd import anatomy, inference
from napari_ivd.io import read_volume
from napari_ivd.io.annotations import find_annotations
from napari_ivd.metrics import l5_s1_outcome
from napari_ivd.models import find_model_dir, load_checkpoint

GRID = inference._Grid((1.0, 1.0, 1.0), 1.0, (5, 130, 60))
LABELS = anatomy.span("L1", "L5-S1")
#: A regular spine on the grid: a level step of 30 px, structures half a step apart (row of each).
ROWS = {"L3": 25, "L3-L4": 40, "L4": 55, "L4-L5": 70, "L5": 85, "L5-S1": 100}


def _blob(seg: np.ndarray, name: str, row: int, col: int = 30, half_rows: int = 2, half_cols: int = 8) -> None:
    """A flat disc or vertebral body in its kind's channel on every slice, centred at (row, col)."""
    channel = inference.KIND_CHANNEL[anatomy.structure(name).kind]
    seg[:, channel, row - half_rows : row + half_rows + 1, col - half_cols : col + half_cols + 1] = 1


def _continued(
    named: tuple[str, ...],
    shown: dict[str, tuple[int, int]],
    labelled: bool = False,
    labels: tuple[str, ...] = LABELS,
    **size: int,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """What the rule names below ``named`` (their mask labelled) when the mask also shows ``shown`` (row, col).

    ``labelled``: the mask already gives the shown structures a level. ``size`` shapes the shown ones.
    """
    seg = np.zeros((GRID.shape[0], 2, *GRID.shape[1:]), np.float32)
    mask = np.zeros(GRID.shape, np.uint8)
    for name in named:
        _blob(seg, name, ROWS[name])
        mask[seg[:, inference.KIND_CHANNEL[anatomy.structure(name).kind]] > 0.5] = anatomy.structure(name).tss_value
    for name, (row, col) in shown.items():
        before = seg.copy()
        _blob(seg, name, row, col, **size)
        if labelled:
            mask[(seg != before).any(axis=1)] = anatomy.structure("L4-L5").tss_value
    positions = {name: np.array([2.0, ROWS[name], 30.0]) for name in named}
    runner = SimpleNamespace(seg={i: seg[i] for i in range(GRID.shape[0])})
    added = inference._continue_from_mask(runner, GRID, positions, mask, list(labels))
    assert all(np.any(mask == anatomy.structure(name).tss_value) for name in added)  # labelled in the mask
    return added, positions


CHAIN = ("L3", "L3-L4", "L4", "L4-L5", "L5")


def test_an_unnamed_disc_half_a_step_below_l5_is_l5_s1():
    added, positions = _continued(CHAIN, {"L5-S1": (100, 30)})
    assert added == ["L5-S1"] and np.allclose(positions["L5-S1"], [2.0, 100.0, 30.0])


def test_a_chain_that_stops_early_is_continued_one_level_at_a_time_while_the_mask_shows_the_next():
    below = {name: (ROWS[name], 30) for name in ("L4-L5", "L5", "L5-S1")}
    assert _continued(CHAIN[:3], below)[0] == ["L4-L5", "L5", "L5-S1"]
    without_l5 = {name: place for name, place in below.items() if name != "L5"}
    assert _continued(CHAIN[:3], without_l5)[0] == ["L4-L5"]  # no body where L5 belongs: stop, skip nothing


@pytest.mark.parametrize(
    ("why", "row", "col", "size"),
    [
        ("a full step below L5: the next vertebra's place", 115, 30, {}),
        ("right under L5's centre: inside the body", 88, 30, {}),
        ("far behind the L4-L5 line: not the disc", 100, 50, {"half_cols": 4}),
        ("a speck", 100, 30, {"half_rows": 0, "half_cols": 1}),
    ],
)
def test_an_unnamed_disc_elsewhere_is_not_taken(why, row, col, size):
    assert _continued(CHAIN, {"L5-S1": (row, col)}, **size)[0] == [], why


def test_a_disc_the_mask_already_gives_a_level_is_not_taken_again():
    assert _continued(CHAIN, {"L5-S1": (100, 30)}, labelled=True)[0] == []


def test_nothing_is_added_below_l5_s1_nor_beyond_the_models_labels():
    assert _continued((*CHAIN, "L5-S1"), {"S1": (115, 30)}, labels=(*LABELS, "S1"))[0] == []  # the sacrum: no
    assert _continued(CHAIN, {"L5-S1": (100, 30)}, labels=LABELS[:-1])[0] == []  # a model without L5-S1


def test_on_a_real_unseen_scan_the_starter_names_l5_s1_from_its_disc_mask(shared_data, monkeypatch):
    """VB2/case-19 (T2w, never trained on): the heatmaps stop at L5, the disc mask shows L5-S1."""
    model, card = load_checkpoint(find_model_dir("ivdnet-lumbar"))
    assert "VB2/case-19" not in card["trained_on"]
    case = shared_data / "lumbar/VB2/case-19"
    volume = read_volume(case / "image.nii.gz")
    points, _ = find_annotations(case, volume.geometry)
    reference = {p.level: volume.geometry.vox_to_mm(np.asarray(p.ijk_vox)[None])[0] for p in points}
    assert "L5-S1" not in reference  # VB2 references stop at L5: the place is L5 + (L5 - L4) / 2

    prediction = inference.predict(volume, model, card, "cpu")
    named = {s.name: s for s in prediction.structures}
    assert l5_s1_outcome({n: s.xyz_mm for n, s in named.items()}, reference) == "named"
    expected = reference["L5"] + (reference["L5"] - reference["L4"]) / 2
    assert np.linalg.norm(named["L5-S1"].xyz_mm - expected) < 8.0
    assert named["L5-S1"].score < inference.GAP_MIN_SCORE  # the network's own peak: review flags it as weak
    assert [s.name for s in prediction.structures if s.from_mask] == ["L5-S1"]
    voxel = tuple(np.round(named["L5-S1"].ijk_vox).astype(int))
    assert prediction.mask_tss[voxel] == anatomy.structure("L5-S1").tss_value

    monkeypatch.setattr(inference, "_continue_from_mask", lambda *args, **kwargs: [])
    assert "L5-S1" not in inference.predict(volume, model, card, "cpu").by_name()  # the heatmaps alone miss it
