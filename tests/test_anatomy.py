"""The anatomy vocabulary: level names, SCT/TotalSpineSeg label values, shifts and colours."""

from __future__ import annotations

import colorsys
import dataclasses
import json
import os
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest

from napari_ivd import anatomy
from napari_ivd.anatomy import (
    DISCS,
    STRUCTURES,
    TSS_CANAL,
    TSS_CORD,
    TSS_SACRUM,
    VERTEBRAE,
    disc_between,
    from_sct_disc,
    from_sct_level,
    from_tss,
    normalize_name,
    shift,
    structure,
    tss_colormap,
    tss_names,
)
from napari_ivd.errors import IvdError, UnknownLevelError

# Written out by hand, independently of the module's generator.
CERVICAL = ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
THORACIC = ["T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12"]
LUMBAR_SACRAL = ["L1", "L2", "L3", "L4", "L5", "S1"]
EXPECTED_VERTEBRAE = [*CERVICAL, *THORACIC, *LUMBAR_SACRAL]


def _rgb_distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a[:3], b[:3])))


# --- the level list ---------------------------------------------------------------------------


def test_the_spine_runs_c1_to_sacrum_with_a_disc_between_each_pair_of_neighbours():
    assert [s.name for s in VERTEBRAE] == EXPECTED_VERTEBRAE
    assert [s.name for s in DISCS] == [f"{a}-{b}" for a, b in pairwise(EXPECTED_VERTEBRAE)]
    assert len(VERTEBRAE) == 25 and len(DISCS) == 24
    assert {"C7-T1", "T12-L1", "L5-S1"} <= {s.name for s in DISCS}


def test_combined_order_is_strictly_cranio_caudal_and_alternates_vertebra_disc():
    assert [s.order for s in STRUCTURES] == list(range(len(STRUCTURES)))
    assert [s.kind for s in STRUCTURES] == ["vertebra", "disc"] * len(DISCS) + ["vertebra"]
    assert STRUCTURES[0].name == "C1" and STRUCTURES[-1].name == "S1"
    for above, disc, below in zip(STRUCTURES[0:-1:2], STRUCTURES[1::2], STRUCTURES[2::2], strict=True):
        assert (disc.upper, disc.lower) == (above.name, below.name)
        assert disc.name == f"{above.name}-{below.name}"


def test_a_disc_knows_its_neighbouring_vertebrae_and_a_vertebra_has_none():
    l4_l5 = structure("L4-L5")
    assert (l4_l5.upper, l4_l5.lower) == ("L4", "L5")
    assert l4_l5.is_disc and not l4_l5.is_vertebra
    l4 = structure("L4")
    assert (l4.upper, l4.lower) == (None, None)
    assert l4.is_vertebra and not l4.is_disc
    assert [structure(n).region for n in ("C1", "T12-L1", "L5-S1", "S1")] == ["C", "T", "L", "S"]
    assert str(l4_l5) == "L4-L5"


def test_structures_are_immutable_so_no_module_can_corrupt_the_shared_table():
    with pytest.raises(dataclasses.FrozenInstanceError):
        structure("L4").name = "L5"  # type: ignore[misc]
    assert structure("L4").name == "L4"


# --- label values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [(2, "C1-C2"), (3, "C2-C3"), (8, "C7-T1"), (9, "T1-T2"), (20, "T12-L1"), (21, "L1-L2"), (25, "L5-S1")],
)
def test_an_sct_disc_label_names_the_disc_above_that_vertebra_number(value, name):
    assert from_sct_disc(value).name == name
    assert from_sct_disc(value).is_disc


@pytest.mark.parametrize(
    ("value", "name"), [(1, "C1"), (7, "C7"), (8, "T1"), (19, "T12"), (20, "L1"), (24, "L5"), (25, "S1")]
)
def test_an_sct_vertebral_level_label_names_its_vertebra(value, name):
    assert from_sct_level(value).name == name
    assert from_sct_level(value).is_vertebra


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (11, "C1"), (17, "C7"), (21, "T1"), (32, "T12"), (41, "L1"), (45, "L5"), (50, "S1"),
        (63, "C2-C3"), (67, "C6-C7"), (71, "C7-T1"), (72, "T1-T2"), (82, "T11-T12"),
        (91, "T12-L1"), (92, "L1-L2"), (95, "L4-L5"), (100, "L5-S1"),
    ],
)  # fmt: skip
def test_a_totalspineseg_mask_value_names_its_structure(value, name):
    assert from_tss(value).name == name


def test_totalspineseg_values_of_anchor_structures():
    assert structure("T12").tss_value == 32
    assert structure("S1").tss_value == TSS_SACRUM == 50
    assert structure("C1-C2").tss_value is None  # TotalSpineSeg has no C1-C2 disc
    assert (TSS_CORD, TSS_CANAL) == (1, 2)


@pytest.mark.parametrize("s", STRUCTURES, ids=lambda s: s.name)
def test_every_structure_round_trips_through_every_label_value(s):
    assert structure(s.name) is s
    lookup = from_sct_disc if s.is_disc else from_sct_level
    assert lookup(s.sct_value) is s
    if s.tss_value is not None:
        assert from_tss(s.tss_value) is s
    else:
        assert s.name == "C1-C2"


def test_label_values_are_unique_within_each_table():
    tss = [s.tss_value for s in STRUCTURES if s.tss_value is not None]
    assert len(tss) == len(set(tss)) == len(STRUCTURES) - 1
    assert len({s.sct_value for s in VERTEBRAE}) == len(VERTEBRAE)
    assert len({s.sct_value for s in DISCS}) == len(DISCS)


def test_values_read_from_a_label_image_work_whatever_their_dtype():
    # NIfTI label images often arrive as float or small unsigned integers.
    assert from_tss(np.uint8(100)).name == "L5-S1"
    assert from_tss(np.float32(41.0)).name == "L1"
    assert from_sct_disc(np.int16(3)).name == "C2-C3"
    assert from_sct_level(20.0).name == "L1"


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("L4-L5", "L4-L5"), ("L4/L5", "L4-L5"), ("l4-l5", "L4-L5"), ("L4L5", "L4-L5"), ("l4 / l5", "L4-L5"),
        ("L4_L5", "L4-L5"), ("L4–L5", "L4-L5"), ("L4-5", "L4-L5"), (" t12-l1 ", "T12-L1"), ("c7t1", "C7-T1"),
        ("L5/S1", "L5-S1"), ("l5", "L5"), ("T07", "T7"), ("sacrum", "S1"), ("S1", "S1"),
    ],
)  # fmt: skip
def test_a_user_may_spell_a_level_the_usual_ways(typed, canonical):
    assert normalize_name(typed) == canonical
    assert structure(typed).name == canonical


@pytest.mark.parametrize("bad", ["L7", "C0", "T13", "S2", "L3-L5", "L5-L4", "L4-L6", "X4", "banana", "", "L"])
def test_an_unknown_level_name_is_refused_with_the_valid_ones_listed(bad):
    with pytest.raises(UnknownLevelError) as info:
        structure(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "C1" in message and "S1" in message and "L4-L5" in message


def test_a_non_adjacent_pair_is_explained_not_just_refused():
    with pytest.raises(UnknownLevelError, match="L3 and L5 are not neighbouring"):
        normalize_name("L3/L5")


def test_unknown_level_error_is_an_ivd_error_so_the_gui_can_show_it():
    assert issubclass(UnknownLevelError, IvdError)
    with pytest.raises(IvdError):
        structure(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lookup", "value", "hint"),
    [
        (from_sct_disc, 1, "2 (C1-C2) … 25 (L5-S1)"),
        (from_sct_disc, 26, "2 (C1-C2) … 25 (L5-S1)"),
        (from_sct_level, 0, "1 (C1) … 25 (S1)"),
        (from_sct_level, 26, "1 (C1) … 25 (S1)"),
        (from_sct_level, 2.5, "1 (C1) … 25 (S1)"),
        (from_tss, 99, "41–45, 50"),
        (from_tss, 62, "63–67, 71–82, 91–95, 100"),  # a C1-C2 value TotalSpineSeg does not have
        (from_tss, 0, "11–17"),
        (from_tss, True, "11–17"),
        (from_tss, "41", "11–17"),
    ],
)
def test_an_unknown_label_value_is_refused_with_the_valid_range(lookup, value, hint):
    with pytest.raises(UnknownLevelError) as info:
        lookup(value)
    message = str(info.value)
    assert repr(value) in message
    assert hint in message


def test_cord_and_canal_values_are_named_when_refused_as_levels():
    with pytest.raises(UnknownLevelError, match="spinal cord"):
        from_tss(TSS_CORD)
    with pytest.raises(UnknownLevelError, match="spinal canal"):
        from_tss(np.uint8(TSS_CANAL))


# --- disc between, shift ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upper", "lower", "disc"),
    [
        ("L4", "L5", "L4-L5"),
        ("T12", "L1", "T12-L1"),
        ("L5", "S1", "L5-S1"),
        ("C1", "C2", "C1-C2"),
        ("l5", "l4", "L4-L5"),
    ],
)
def test_the_disc_between_two_neighbouring_vertebrae(upper, lower, disc):
    assert disc_between(upper, lower).name == disc
    assert disc_between(structure(upper), structure(lower)) is structure(disc)


@pytest.mark.parametrize(
    ("upper", "lower", "words"),
    [("L3", "L5", "not neighbours"), ("L4", "L4", "not neighbours"), ("L4-L5", "L5", "is a disc"), ("L9", "L5", "L9")],
)
def test_no_disc_between_non_neighbours_or_discs(upper, lower, words):
    with pytest.raises(UnknownLevelError, match=words):
        disc_between(upper, lower)


@pytest.mark.parametrize(
    ("start", "steps", "end"),
    [
        ("L4", 1, "L5"), ("L5", 1, "S1"), ("T12", 1, "L1"), ("L1", -1, "T12"), ("C7", 1, "T1"), ("L3", 0, "L3"),
        ("L4-L5", -1, "L3-L4"), ("T11-T12", 1, "T12-L1"), ("T12-L1", 1, "L1-L2"), ("C7-T1", -1, "C6-C7"),
        ("L5-S1", -(len(DISCS) - 1), "C1-C2"), ("C1", len(VERTEBRAE) - 1, "S1"),
    ],
)  # fmt: skip
def test_shift_moves_a_label_along_the_spine_within_its_kind(start, steps, end):
    assert shift(start, steps).name == end
    assert shift(start, steps).kind == structure(start).kind


def test_shifting_every_disc_of_an_off_by_one_spine_relabels_it_one_level_down():
    labelled = ["L2-L3", "L3-L4", "L4-L5"]
    assert [shift(name, 1).name for name in labelled] == ["L3-L4", "L4-L5", "L5-S1"]


@pytest.mark.parametrize(("start", "steps"), [("S1", 1), ("C1", -1), ("L5-S1", 1), ("C1-C2", -1), ("L1", 100)])
def test_shifting_past_either_end_of_the_spine_is_refused(start, steps):
    with pytest.raises(UnknownLevelError) as info:
        shift(start, steps)
    message = str(info.value)
    assert structure(start).name in message
    assert f"{steps:+d}" in message


# --- colours ----------------------------------------------------------------------------------


def test_every_colour_is_an_opaque_rgba_in_unit_range():
    for s in STRUCTURES:
        assert len(s.colour) == 4
        assert all(isinstance(c, float) and 0.0 <= c <= 1.0 for c in s.colour)
        assert s.colour[3] == 1.0


def test_colours_are_unique_per_structure():
    colours = [s.colour for s in STRUCTURES]
    assert len(set(colours)) == len(colours)


def test_neighbours_along_the_spine_are_told_apart_by_colour():
    for a, b in pairwise(STRUCTURES):  # vertebra/disc neighbours
        assert _rgb_distance(a.colour, b.colour) > 0.25, (a.name, b.name)
    for a, b in pairwise(VERTEBRAE):  # consecutive vertebrae: different hues
        assert _rgb_distance(a.colour, b.colour) > 0.3, (a.name, b.name)
    for a, b in pairwise(DISCS):
        assert _rgb_distance(a.colour, b.colour) > 0.3, (a.name, b.name)


def test_a_disc_shares_its_upper_vertebras_hue_but_is_brighter_and_more_saturated():
    for disc in DISCS:
        h_disc, s_disc, v_disc = colorsys.rgb_to_hsv(*disc.colour[:3])
        h_vert, s_vert, v_vert = colorsys.rgb_to_hsv(*structure(disc.upper).colour[:3])
        assert min(abs(h_disc - h_vert), 1 - abs(h_disc - h_vert)) < 1e-6, disc.name
        assert s_disc > s_vert and v_disc > v_vert, disc.name


def test_colours_are_the_same_in_every_run():
    code = "import json; from napari_ivd import anatomy; print(json.dumps([s.colour for s in anatomy.STRUCTURES]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert [tuple(c) for c in json.loads(out.stdout)] == [s.colour for s in STRUCTURES]


def test_importing_the_vocabulary_pulls_in_no_gui_or_deep_learning_stack():
    code = (
        "import sys, napari_ivd.anatomy; "
        "print(sorted(m for m in ('napari', 'qtpy', 'PyQt6', 'torch', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- napari Labels colormap -------------------------------------------------------------------


def test_tss_colormap_colours_every_mask_value_and_leaves_background_transparent():
    cmap = tss_colormap()
    assert cmap[0] == (0.0, 0.0, 0.0, 0.0)
    assert set(cmap) == {0} | set(tss_names())
    for s in STRUCTURES:
        if s.tss_value is not None:
            assert cmap[s.tss_value] == s.colour
    assert cmap[TSS_CORD] != cmap[TSS_CANAL]
    assert all(len(c) == 4 and all(0.0 <= x <= 1.0 for x in c) for c in cmap.values())


def test_tss_colormap_is_a_fresh_dict_callers_may_edit():
    cmap = tss_colormap()
    cmap[0] = (1.0, 1.0, 1.0, 1.0)
    assert tss_colormap()[0] == (0.0, 0.0, 0.0, 0.0)


def test_tss_names_label_every_mask_value_for_the_layer_tooltip():
    names = tss_names()
    assert names[TSS_CORD] == "spinal cord" and names[TSS_CANAL] == "spinal canal"
    assert names[100] == "L5-S1" and names[41] == "L1" and names[TSS_SACRUM] == "S1"
    structure_values = {v: n for v, n in names.items() if v not in (TSS_CORD, TSS_CANAL)}
    assert all(from_tss(v).name == n for v, n in structure_values.items())
    assert len(structure_values) == len(STRUCTURES) - 1  # all but C1-C2


def test_module_exports_its_public_api():
    public = {"structure", "normalize_name", "from_sct_disc", "from_sct_level", "from_tss", "shift", "disc_between"}
    assert public <= set(anatomy.__all__)
    assert all(hasattr(anatomy, name) for name in anatomy.__all__)
