"""The L5-S1 disc is named from the disc mask where the heatmaps name L5 but not it (issue 19).

Few training scans label L5-S1, so its heatmap channel is weak on unseen scans, while the
disc segmentation, learnt from discs of every level, shows the disc: an unnamed disc-mask
component about half a level step below L5, on the L4→L5 line and not a speck, is L5-S1.
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
NAMED = {"L4": np.array([2.0, 40.0, 30.0]), "L4-L5": np.array([2.0, 55.0, 30.0]), "L5": np.array([2.0, 70.0, 30.0])}
L4_L5 = anatomy.structure("L4-L5").tss_value


def _disc(seg: np.ndarray, row: int, col: int, half_rows: int = 2, half_cols: int = 8) -> None:
    """A flat disc in the disc channel of every slice, centred at (row, col)."""
    seg[
        :, inference.KIND_CHANNEL["disc"], row - half_rows : row + half_rows + 1, col - half_cols : col + half_cols + 1
    ] = 1


def _found(
    row: int, col: int = 30, named: dict | None = None, labelled: bool = False, **size: int
) -> np.ndarray | None:
    """What the rule takes from a disc mask holding the named L4-L5 and one more disc at (row, col).

    ``labelled``: the mask already gives that disc a level, as the pipeline does near a named disc.
    """
    seg = np.zeros((GRID.shape[0], 2, *GRID.shape[1:]), np.float32)
    _disc(seg, 55, 30)
    if not labelled:
        mask = np.zeros(GRID.shape, np.uint8)
        mask[seg[:, inference.KIND_CHANNEL["disc"]] > 0.5] = L4_L5  # the named disc, labelled as the pipeline does
    _disc(seg, row, col, **size)
    if labelled:
        mask = np.where(seg[:, inference.KIND_CHANNEL["disc"]] > 0.5, L4_L5, 0).astype(np.uint8)
    runner = SimpleNamespace(seg={i: seg[i] for i in range(GRID.shape[0])})
    return inference._sacral_disc_from_mask(runner, GRID, NAMED if named is None else named, mask)


def test_an_unnamed_disc_half_a_step_below_l5_is_l5_s1():
    found = _found(85)
    assert found is not None and len(found) == 5 * 5 * 17
    assert np.allclose(found.mean(axis=0), [2.0, 85.0, 30.0])


@pytest.mark.parametrize(
    ("why", "row", "col", "size"),
    [
        ("a full step below L5: the next vertebra's place", 100, 30, {}),
        ("right under L5's centre: inside the body", 73, 30, {}),
        ("far behind the L4-L5 line: not the disc", 85, 50, {"half_cols": 4}),
        ("a speck", 85, 30, {"half_rows": 0, "half_cols": 1}),
    ],
)
def test_an_unnamed_disc_elsewhere_is_not_taken(why, row, col, size):
    assert _found(row, col, **size) is None, why


def test_a_disc_the_mask_already_gives_a_level_is_not_taken_again():
    assert _found(85, labelled=True) is None


def test_nothing_is_added_without_l5_or_when_l5_s1_is_named():
    assert _found(85, named={k: v for k, v in NAMED.items() if k != "L5"}) is None
    assert _found(85, named=NAMED | {"L5-S1": np.array([2.0, 85.0, 30.0])}) is None


def test_on_a_real_unseen_water_scan_the_starter_names_l5_s1_from_its_disc_mask(shared_data, monkeypatch):
    """VB3/case-42 (never trained on): the heatmaps stop at L5, the disc mask shows L5-S1."""
    model, card = load_checkpoint(find_model_dir("ivdnet-lumbar"))
    assert "VB3/case-42" not in card["trained_on"]
    case = shared_data / "lumbar/VB3/case-42"
    volume = read_volume(case / "image.nii.gz")
    points, _ = find_annotations(case, volume.geometry)
    reference = {p.level: volume.geometry.vox_to_mm(np.asarray(p.ijk_vox)[None])[0] for p in points}
    assert "L5-S1" not in reference  # VB3 references stop at L5: the place is L5 + (L5 - L4) / 2

    prediction = inference.predict(volume, model, card, "cpu")
    named = {s.name: s for s in prediction.structures}
    assert l5_s1_outcome({n: s.xyz_mm for n, s in named.items()}, reference) == "named"
    expected = reference["L5"] + (reference["L5"] - reference["L4"]) / 2
    assert np.linalg.norm(named["L5-S1"].xyz_mm - expected) < 8.0
    assert named["L5-S1"].score < inference.GAP_MIN_SCORE  # the network's own peak: review flags it as weak
    assert [s.name for s in prediction.structures if s.from_mask] == ["L5-S1"]
    voxel = tuple(np.round(named["L5-S1"].ijk_vox).astype(int))
    assert prediction.mask_tss[voxel] == anatomy.structure("L5-S1").tss_value

    monkeypatch.setattr(inference, "_sacral_disc_from_mask", lambda *args, **kwargs: None)
    assert "L5-S1" not in inference.predict(volume, model, card, "cpu").by_name()  # the heatmaps alone miss it
