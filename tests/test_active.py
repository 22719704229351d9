"""Active learning without a viewer: strategies on hand-built cases, the scorer's cues, the score cache.

Strategies, k-center and the plausibility checks are pure functions tested on hand-built
records and spines; the scorer's cues on hand-built predictions; the cache on an in-memory
store of small synthetic scans run through the bundled model.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ivd import anatomy
from napari_ivd.active import (
    CachedCase,
    CaseRecord,
    Chain,
    Perturbation,
    Ranking,
    ScoreCache,
    assess,
    check_chain,
    check_prediction,
    compare_with_earlier,
    embed_volume,
    implausibility,
    k_center_order,
    model_key,
    perturb,
    rank,
    ranking,
    score_store_steps,
)
from napari_ivd.active.chain import UNANCHORED_UNCERTAINTY
from napari_ivd.active.plausibility import Finding
from napari_ivd.errors import RankingError
from napari_ivd.inference import PredictedStructure, Prediction
from napari_ivd.io import SagittalView, Volume, VolumeGeometry
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.models import UNetConfig, build, find_model_dir, load_checkpoint, save_checkpoint
from napari_ivd.progress import Job
from napari_ivd.skeleton import SkeletonPrior
from napari_ivd.store import AnnotationStore
from napari_ivd.worklist import run_steps

LUMBAR = anatomy.span("L1", "L5-S1")  # L1, L1-L2, ..., L5, L5-S1: ten structures
STEP_MM = 17.0  # vertebra to the next disc
GEOMETRY = VolumeGeometry(np.eye(4), (64, 100, 220), "hand-built")  # RAS: rows of the display run down -k
VIEW = SagittalView(GEOMETRY)


def _spine(
    rows: dict[str, float] | None = None, cols: dict[str, float] | None = None
) -> dict[str, tuple[float, float]]:
    """A regular lumbar spine in the sagittal plane (row_mm, col_mm), with some positions overridden."""
    spine = {name: (20.0 + STEP_MM * i, 50.0) for i, name in enumerate(LUMBAR)}
    for name, row in (rows or {}).items():
        spine[name] = (row, spine[name][1])
    for name, col in (cols or {}).items():
        spine[name] = (spine[name][0], col)
    return spine


def _prediction(spine: dict[str, tuple[float, float]], score: float = 0.9, lateral: float = 32.0) -> Prediction:
    """A prediction naming ``spine``'s structures (plane mm) on the hand-built grid (1 mm voxels)."""
    structures = []
    for name, (row, col) in spine.items():
        ijk = VIEW.display_to_vox(np.array([[lateral, row, col]]))[0]
        structures.append(
            PredictedStructure(name, anatomy.structure(name).kind, score, ijk, GEOMETRY.vox_to_mm(ijk[None])[0])
        )
    structures.sort(key=lambda s: anatomy.structure(s.name).order)
    return Prediction(tuple(structures), np.zeros((1, 1, 1), np.uint8), "hand-built", lateral)


# ---------------------------------------------------------------------- strategies
def _records() -> list[CaseRecord]:
    unit = np.eye(3)
    return [
        CaseRecord("calm", score=0.2, reason="L3 weak (0.45 peak)", embedding=unit[0]),
        CaseRecord("twin-a", score=0.9, reason="L4-L5 unsure (4.2 mm spread)", embedding=unit[1]),
        CaseRecord("twin-b", score=0.85, reason="L4 lost in 2 of 3 perturbed runs", embedding=unit[1] + 0.01),
        CaseRecord("odd", score=0.6, reason="L2-L3 missing between L2 and L3", embedding=unit[2]),
        CaseRecord("unscored", reason="not scored: unreadable image"),
        CaseRecord("done", status="verified", score=1.0, embedding=unit[0]),
    ]


def test_uncertainty_strategy_puts_the_most_informative_case_first_and_leaves_verified_ones_out():
    rows = rank(_records(), "uncertainty")
    assert [r.case_id for r in rows] == ["twin-a", "twin-b", "odd", "calm", "unscored"]
    assert [r.rank for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].score == pytest.approx(0.9) and rows[0].reason == "L4-L5 unsure (4.2 mm spread)"
    assert rows[-1].score is None and rows[-1].reason.startswith("not scored")


def test_uncertainty_strategy_puts_the_cases_to_fix_as_a_whole_first_surest_first_whatever_their_score():
    records = [
        CaseRecord("sound-but-unsure", score=0.99),
        CaseRecord("miscounted", score=0.5, fix_first=0.9),
        CaseRecord("not-counted-from-the-sacrum", score=0.7, fix_first=UNANCHORED_UNCERTAINTY),
        CaseRecord("gap", score=0.8, fix_first=0.9),
        CaseRecord("unscored"),
    ]
    order = [r.case_id for r in rank(records, "uncertainty")]
    assert order == ["gap", "miscounted", "not-counted-from-the-sacrum", "sound-but-unsure", "unscored"]


def test_uncertainty_diversity_strategy_takes_the_different_case_before_a_near_duplicate():
    rows = rank(_records(), "uncertainty+diversity")
    assert [r.case_id for r in rows] == ["twin-a", "odd", "twin-b", "calm", "unscored"]
    twin, calm = rows[2], rows[3]
    assert twin.score < 0.02 and twin.reason == "L4 lost in 2 of 3 perturbed runs; resembles twin-a"
    assert calm.score == 0.0 and calm.reason == "L3 weak (0.45 peak); resembles done"  # the verified case's twin


def test_uncertainty_diversity_strategy_passes_over_a_case_like_a_verified_one():
    unit = np.eye(2)
    records = [
        CaseRecord("like-verified", score=0.9, embedding=unit[0] + 0.02),
        CaseRecord("new-kind", score=0.5, embedding=unit[1]),
        CaseRecord("verified", status="verified", embedding=unit[0]),
    ]
    assert [r.case_id for r in rank(records, "uncertainty")] == ["like-verified", "new-kind"]
    rows = rank(records, "uncertainty+diversity")
    assert [r.case_id for r in rows] == ["new-kind", "like-verified"]
    assert rows[1].reason.endswith("resembles verified")


def test_random_strategy_is_a_seeded_shuffle_of_the_cases_not_verified():
    records = [CaseRecord(f"case-{i:02d}", score=i / 20) for i in range(20)] + [CaseRecord("done", "verified")]
    first = [r.case_id for r in rank(records, "random", seed=3)]
    assert first == [r.case_id for r in rank(records[::-1], "random", seed=3)]  # input order does not matter
    assert sorted(first) == [f"case-{i:02d}" for i in range(20)]
    assert first != [r.case_id for r in rank(records, "random", seed=4)]
    assert first != sorted(first)
    assert rank(records, "random", seed=3)[0].reason == "random draw (seed 3)"


def test_an_unknown_strategy_is_refused_with_the_valid_ones():
    with pytest.raises(RankingError, match="choose one of random, uncertainty, uncertainty\\+diversity"):
        rank(_records(), "most-recent")


def test_k_center_picks_the_case_farthest_from_the_annotated_ones():
    annotated = np.array([[0.0, 0.0], [1.0, 0.0]])
    candidates = np.array([[0.1, 0.1], [0.5, 3.0], [0.9, 0.2], [0.4, 1.0], [0.5, 2.8]])
    picks = k_center_order(candidates, annotated)
    assert [p.index for p in picks] == [1, 3, 2, 4, 0]
    assert picks[0].distance == pytest.approx(np.hypot(0.5, 3.0)) and picks[0].nearest == 0
    assert picks[3].nearest == len(annotated) + 1  # candidate 4 sits next to the first pick
    assert picks[3].value == pytest.approx(0.2 / np.hypot(0.5, 3.0))
    weighted = k_center_order(candidates, annotated, weights=np.array([1.0, 0.1, 1.0, 1.0, 1.0]))
    assert weighted[0].index == 4  # the farthest case is certain: its uncertain neighbour goes first
    assert [p.index for p in k_center_order(candidates)][:2] == [0, 1]  # nothing annotated: first row, then farthest


# ---------------------------------------------------------------------- anatomical plausibility
def _prior() -> SkeletonPrior:
    rng = np.random.default_rng(0)
    shapes = []
    for _ in range(12):
        size = rng.uniform(0.9, 1.1)
        shapes.append(
            {n: (size * r + rng.normal(0, 0.5), size * c + rng.normal(0, 0.5)) for n, (r, c) in _spine().items()}
        )
    return SkeletonPrior.fit(shapes)


def test_a_regular_spine_is_plausible():
    assert implausibility(_spine(), _prior()).points == {}


def test_implausibility_finds_a_level_out_of_order():
    found = implausibility(_spine(rows={"L3": 5.0}), _prior())  # L3 drawn above L1
    assert found.points["L3"].uncertainty == 1.0 and found.points["L3"].reason == "L3 out of order"
    assert [n for n, f in found.points.items() if f.reason.endswith("out of order")] == ["L3"]


# ---------------------------------------------------------------------- the chain: missing levels, off by one
EXTENT = (219.0, 99.0)  # the hand-built scan's plane: rows, cols (mm)


def test_a_whole_chain_down_to_the_sacrum_has_nothing_missing_or_miscounted():
    assert check_chain(_spine(), EXTENT, _prior()) == Chain()


def test_a_level_missing_between_named_ones_gets_a_placeholder_between_its_neighbours():
    spine = _spine()
    del spine["L3"], spine["L3-L4"]
    chain = check_chain(spine, EXTENT, _prior())
    assert [(f.level, f.reason) for f in chain.case] == [
        ("L3", "L3 missing between L2-L3 and L4"),
        ("L3-L4", "L3-L4 missing between L2-L3 and L4"),
    ]
    assert [(p.level, p.position) for p in chain.placeholders] == [
        ("L3", pytest.approx(_spine()["L3"])),
        ("L3-L4", pytest.approx(_spine()["L3-L4"])),
    ]
    assert {n: f.reason for n, f in chain.points.items()} == {
        "L2-L3": "L2-L3 next to missing L3",
        "L4": "L4 next to missing L3-L4",
    }
    assert chain.in_words() == ["L3 and L3-L4 missing between L2-L3 and L4"]  # one cause, said once
    del spine["L1"]  # a level above the model's first one is not "missing": it cannot name it
    assert {f.level for f in check_chain(spine, EXTENT, _prior(), top="L1-L2").case} == {"L3", "L3-L4"}
    both = check_chain(spine, EXTENT, _prior())
    assert {f.level for f in both.case} == {"L1", "L3", "L3-L4"}
    assert both.in_words() == [  # two causes: two lines, in the order found
        "L3 and L3-L4 missing between L2-L3 and L4",
        "L1 missing: the chain stops 37 mm below the top of the scan",
    ]


def test_a_prediction_is_checked_against_the_skeleton_it_was_named_with():
    """What predict says to check first: the missing L1 is missing only up to the model's first level."""
    spine = _spine()
    del spine["L1"]
    named_with = replace(_prediction(spine), skeleton=_prior())  # its first level: L1
    assert [f.reason for f in check_prediction(named_with, VIEW).case] == [
        "L1 missing: the chain stops 37 mm below the top of the scan"  # L1-L2 at 37 mm
    ]
    assert check_prediction(replace(named_with, skeleton=None), VIEW).case == ()
    assert check_prediction(named_with, VIEW, absent={"L1"}).case == ()


def test_a_chain_that_stops_short_of_the_sacrum_misses_the_levels_the_scan_still_shows():
    spine = {n: p for n, p in _spine().items() if n not in ("L5", "L5-S1")}  # L4-L5 at 139 mm, scan to 219 mm
    chain = check_chain(spine, EXTENT, _prior())
    assert [f.reason for f in chain.case] == [
        "L5 missing: the chain stops 80 mm above the end of the scan",
        "L5-S1 missing: the chain stops 80 mm above the end of the scan",
    ]
    assert chain.in_words() == ["L5 and L5-S1 missing: the chain stops 80 mm above the end of the scan"]
    assert [(p.level, p.position) for p in chain.placeholders] == [
        ("L5", pytest.approx(_spine()["L5"])),
        ("L5-S1", pytest.approx(_spine()["L5-S1"])),
    ]
    # the scan ends right under L4-L5: nothing below is in view, so nothing is missing, and
    # nothing counts the names from the sacrum either: every name is in doubt
    ended = check_chain(spine, (145.0, 99.0), _prior())
    assert ended.placeholders == ()
    assert [f.reason for f in ended.case] == [
        "the scan ends 6 mm below L4-L5, above the sacrum: names not counted from it"
    ]
    assert ended.in_words() == [ended.case[0].reason]  # a reason naming no missing level is said as is
    assert {n: f.uncertainty for n, f in ended.points.items()} == dict.fromkeys(spine, UNANCHORED_UNCERTAINTY)
    whole = _spine()  # down to L5-S1 at the scan's end: counted from the sacrum, nothing in doubt
    assert check_chain(whole, (float(whole["L5-S1"][0]) + 5.0, 99.0), _prior()) == Chain()
    to_l5 = {n: p for n, p in whole.items() if n != "L5-S1"}  # a sacralised L5: L5-S1 marked absent
    assert check_chain(to_l5, (float(whole["L5"][0]) + 5.0, 99.0), _prior(), absent={"L5-S1"}) == Chain()
    assert check_chain(to_l5, (float(whole["L5"][0]) + 5.0, 99.0), _prior()).case[0].reason.startswith("the scan ends")
    # only L5 fits: L5-S1 would lie less than half a step from the scan's end
    assert [p.level for p in check_chain(spine, (165.0, 99.0), _prior()).placeholders] == ["L5"]


def test_a_chain_that_starts_below_the_models_first_level_misses_the_levels_above():
    spine = {n: p for n, p in _spine(rows={n: r + 40 for n, (r, _) in _spine().items()}).items() if n != "L1"}
    chain = check_chain(spine, (260.0, 99.0), _prior())  # L1-L2 at 77 mm: L1 belongs at 60 mm
    assert [(f.level, f.reason) for f in chain.case] == [
        ("L1", "L1 missing: the chain stops 77 mm below the top of the scan")
    ]
    assert chain.placeholders[0].position == pytest.approx((60.0, 50.0))


def test_names_off_by_one_from_the_sacrum_are_found_though_every_name_is_in_order():
    # the network lost count above L4: the real L3-L4 is called L2-L3, L3 is called L2, and so on
    real = anatomy.span("L2", "L5-S1")
    named = ["L1", "L1-L2", "L2", "L2-L3", "L4", "L4-L5", "L5", "L5-S1"]
    spine = {name: (20.0 + STEP_MM * i, 50.0) for i, name in enumerate(named)}
    chain = check_chain(spine, EXTENT, _prior())
    assert {n: f.reason for n, f in chain.points.items()} == {
        name: f"names one level off from the sacrum: {name} would be {truth}"
        for name, truth in zip(named[:4], real[:4], strict=True)
    }
    assert [f.reason for f in chain.case] == ["names one level off from the sacrum: L2-L3 would be L3-L4"]
    assert chain.placeholders == ()  # nothing is missing: the names are wrong, not the structures
    # without the sacrum in view the names still skip a level where the spine has none
    local = check_chain({n: p for n, p in spine.items() if n != "L5-S1"}, EXTENT, _prior())
    assert local.points["L4"].reason == "L2-L3 to L4: names skip one level where the spine has none"


def test_a_chain_that_names_the_sacrum_is_counted_from_it():
    # a model that learnt S1 names it below L5-S1; the count starts there, not from L5-S1
    named = ["L1", "L1-L2", "L2", "L2-L3", "L4", "L4-L5", "L5", "L5-S1", "S1"]  # lost count above L4
    spine = {name: (20.0 + STEP_MM * i, 50.0) for i, name in enumerate(named)}
    chain = check_chain(spine, (240.0, 99.0), _prior())
    assert [f.reason for f in chain.case] == ["names one level off from the sacrum: L2-L3 would be L3-L4"]
    right = {name: (20.0 + STEP_MM * i, 50.0) for i, name in enumerate(anatomy.span("L1", "S1"))}
    assert check_chain(right, (240.0, 99.0), _prior()).case == ()


def test_the_scorer_adds_the_chain_to_each_points_uncertainty_and_places_the_missing_levels():
    spine = _spine()
    off = {
        anatomy.shift(n, -1).name if anatomy.structure(n).order < anatomy.structure("L4").order else n: p
        for n, p in spine.items()
    }  # stable under perturbation, one level off above L4
    scored = assess(_prediction(off), [_prediction(off)] * 3, VIEW, _prior())
    by_level = {p.level: p for p in scored.points}
    assert by_level["L2-L3"].components["chain"] == pytest.approx(0.9) and by_level["L2-L3"].uncertainty >= 0.9
    assert by_level["L5"].reason == "L5: no doubt found"
    assert scored.reason.startswith("names one level off from the sacrum") and scored.score > 0.5
    assert scored.fix_first == pytest.approx(0.9)
    assert assess(_prediction(spine), [_prediction(spine)] * 3, VIEW, _prior()).fix_first == 0.0

    short = {n: p for n, p in spine.items() if n != "L5-S1"}
    scored = assess(_prediction(short), [_prediction(short)] * 3, VIEW, _prior())
    assert scored.reason == "L5-S1 missing: the chain stops 63 mm above the end of the scan"
    assert scored.fix_first == pytest.approx(0.8)
    (placeholder,) = scored.placeholders
    ijk = VIEW.display_to_vox(np.array([[32.0, *spine["L5-S1"]]]))[0]
    assert placeholder.level == "L5-S1" and placeholder.position == pytest.approx(GEOMETRY.vox_to_mm(ijk[None])[0])


def test_implausibility_finds_a_disc_spacing_outlier():
    rows = {"L4-L5": 20.0 + STEP_MM * 7 + 12.0, "L5": 20.0 + STEP_MM * 8 + 12.0, "L5-S1": 20.0 + STEP_MM * 9 + 12.0}
    found = implausibility(_spine(rows=rows))  # everything below L4 slid 12 mm down: a too long L3-L4 to L4-L5 step
    assert set(found.points) == {"L3-L4", "L4-L5", "L4", "L5"}
    assert found.points["L4-L5"].reason == "L3-L4 to L4-L5 spacing 1.4× the median"
    assert 0 < found.points["L4-L5"].uncertainty < 1


def test_implausibility_finds_a_point_off_the_learned_spine_shape():
    found = implausibility(_spine(cols={"L3": 65.0}), _prior())  # L3 15 mm behind its neighbours
    assert max(found.points, key=lambda n: found.points[n].uncertainty) == "L3"
    assert (
        found.points["L3"].reason.startswith("L3 off the learned spine shape") and found.points["L3"].uncertainty > 0.5
    )


def test_structures_an_earlier_model_version_named_otherwise_at_the_same_place_are_flagged():
    spine = _spine()
    scored = assess(_prediction(spine), [_prediction(spine)] * 3, VIEW, _prior())
    assert scored.reason == "no doubt found" and scored.score == pytest.approx(0.19)  # 0.9 peaks: 0.1 each, twice
    mm = {s.name: s.xyz_mm for s in _prediction(spine).structures}
    same = compare_with_earlier(scored, mm, "ivdnet-lumbar")
    assert same == scored  # the same names at the same places: nothing to say
    shifted = {anatomy.shift(n, 1).name: p for n, p in mm.items() if n != "L5-S1" and n != "L5"}  # named one lower
    flagged = compare_with_earlier(scored, shifted, "ivdnet-lumbar")
    assert flagged.reason == "names one level off from ivdnet-lumbar's proposal: L4-L5 was L5-S1"
    by_level = {p.level: p for p in flagged.points}
    assert by_level["L3"].reason == "names one level off from ivdnet-lumbar's proposal: L3 was L4"
    assert by_level["L3"].uncertainty >= 0.9 and by_level["L5"].uncertainty == pytest.approx(0.19)  # no earlier match
    assert flagged.score > 0.5
    far = {n: p + np.array([20.0, 0.0, 0.0]) for n, p in shifted.items()}  # other slices: not the same structures
    assert compare_with_earlier(scored, far, "ivdnet-lumbar") == scored


# ---------------------------------------------------------------------- the scorer's cues
def test_a_stable_confident_prediction_scores_low_and_a_moving_point_is_named_as_the_reason():
    spine = _spine()
    stable = assess(_prediction(spine), [_prediction(spine)] * 3, VIEW, _prior())
    assert stable.score == pytest.approx(1 - 0.9 * 0.9) and stable.unsure_levels() == {}  # peak and chain_weak

    moved = [_prediction(spine), _prediction(_spine(rows={"L4-L5": spine["L4-L5"][0] + 6})), _prediction(spine)]
    scored = assess(_prediction(spine), moved, VIEW, _prior())
    assert scored.reason == "L4-L5 unsure (2.6 mm spread)"
    assert list(scored.unsure_levels()) == ["L4-L5"] and scored.score > stable.score
    worst = max(scored.points, key=lambda p: p.uncertainty)
    assert worst.level == "L4-L5" and worst.spread_mm == pytest.approx(np.sqrt(3 * 1.5**2 + 4.5**2) / 2)


def test_a_point_that_moves_more_is_more_uncertain_even_below_a_millimetre():
    # most points are right to 1-2 mm, so the ranking among small spreads matters: graded from 0 mm
    spine = _spine()
    nudged = _spine(rows={"L2": spine["L2"][0] + 0.6, "L4": spine["L4"][0] + 1.8})  # L2 0.6 mm, L4 1.8 mm away
    scored = assess(_prediction(spine), [_prediction(nudged), _prediction(spine), _prediction(spine)], VIEW, _prior())
    by_level = {p.level: p for p in scored.points}
    assert by_level["L4"].uncertainty > by_level["L2"].uncertainty > by_level["L3"].uncertainty
    assert by_level["L2"].components["spread"] == pytest.approx(0.26 / 1.26, abs=1e-3)  # 0.26 mm RMS spread


def test_every_point_of_a_chain_the_network_is_lukewarm_about_shares_its_doubt():
    # a chain named one level off is stable and each point looks like a structure; its weak names give it away
    sure, lukewarm = _prediction(_spine(), score=0.95), _prediction(_spine(), score=0.6)
    confident = {p.level: p for p in assess(sure, [sure] * 3, VIEW, _prior()).points}
    doubtful = assess(lukewarm, [lukewarm] * 3, VIEW, _prior())
    assert all(p.uncertainty > confident[p.level].uncertainty for p in doubtful.points)
    assert doubtful.points[0].components["chain_weak"] == pytest.approx(0.4)
    # a point the network is sure of in a lukewarm chain is doubted for the chain's sake, and says so
    l3_sure = replace(
        lukewarm, structures=tuple(replace(s, score=0.95) if s.name == "L3" else s for s in lukewarm.structures)
    )
    l3 = {p.level: p for p in assess(l3_sure, [l3_sure] * 3, VIEW, _prior()).points}["L3"]
    assert (
        l3.reason == "the chain's names are weak as a whole (0.60 median peak)"
        and l3.uncertainty > confident["L3"].uncertainty
    )


def test_renamed_lost_and_extra_structures_under_perturbation_make_a_case_unsure():
    spine = _spine()
    shifted = {anatomy.shift(n, -1).name: p for n, p in spine.items()}  # every level named one too high
    without_l4 = {n: p for n, p in spine.items() if n != "L4"}
    with_extra = {**spine, "T12-L1": (3.0, 50.0)}
    runs = [_prediction(shifted), _prediction(without_l4), _prediction(with_extra)]
    scored = assess(_prediction(spine), runs, VIEW)
    by_level = {p.level: p for p in scored.points}
    assert by_level["L3"].reason == "L3 named L2 in 1 of 3 perturbed runs"
    assert by_level["L4"].components["lost"] == pytest.approx(1 / 3, abs=1e-3)
    assert by_level["L4"].components["renamed"] == pytest.approx(1 / 3, abs=1e-3)
    assert "T12-L1 found only in 1 of 3 perturbed runs" in [f.reason for f in scored.findings]
    assert scored.score > 0.3


def test_weak_peaks_and_an_empty_prediction():
    weak = assess(_prediction(_spine(), score=0.15), [], VIEW)
    assert weak.reason.endswith("weak (0.15 peak)") and weak.score == pytest.approx(1 - 0.15**2)  # own and chain's
    nothing = assess(_prediction({}), [], VIEW)
    assert (nothing.score, nothing.reason, nothing.points) == (1.0, "no disc or vertebra found", ())
    assert nothing.fix_first == 1.0  # the whole case to annotate: ranked first


def test_a_disc_named_from_the_mask_alone_says_so_rather_than_weak():
    plain = _prediction(_spine())
    structures = [replace(s, score=0.01, from_mask=True) if s.name == "L5-S1" else s for s in plain.structures]
    by_level = {p.level: p for p in assess(replace(plain, structures=tuple(structures)), [], VIEW).points}
    assert by_level["L5-S1"].reason == "L5-S1 seen in the mask only (its own heatmap 0.01)"
    assert by_level["L5-S1"].uncertainty > by_level["L4"].uncertainty


def test_a_perturbed_copy_keeps_every_voxel_at_its_scanner_position():
    affine = np.array([[0.0, 0.0, -0.8, 40.0], [-0.5, 0.0, 0.0, 10.0], [0.0, -0.5, 0.0, 90.0], [0, 0, 0, 1]])
    array = np.random.default_rng(0).integers(0, 1000, (80, 90, 30)).astype(np.int16)
    volume = Volume(array, VolumeGeometry(affine, array.shape, "oblique"), Path("oblique.nii.gz"))
    copy = perturb(volume, Perturbation(gamma=1.25, crop_mm=(1.6, 3.0, 2.0)))
    view = volume.view
    crop = np.array([2, 6, 4])  # mm / display spacing (0.8, 0.5, 0.5)
    assert copy.array.shape == tuple(np.array(view.display.shape) - crop)
    display_index = np.array([[5.0, 7.0, 9.0]])
    np.testing.assert_allclose(
        copy.geometry.vox_to_mm(display_index), view.display.vox_to_mm(display_index + crop), atol=1e-9
    )
    assert copy.array.max() == pytest.approx(1.0) and copy.array.min() == pytest.approx(0.0)


def test_embeddings_are_unit_vectors_that_tell_scans_apart_for_any_network():
    model, card = load_checkpoint(find_model_dir(None))
    first, again, other = (embed_volume(_volume(seed), model, card) for seed in (0, 0, 1))
    assert first.shape == (2 * model.config.widths[3],) and np.linalg.norm(first) == pytest.approx(1.0)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    # any other network: its default forward_features, the heatmap and mask probabilities
    unet = build("unet", UNetConfig(labels=("L4", "L4-L5"), base_channels=4, depth=2)).eval()
    generic = embed_volume(_volume(0), unet, {"input": {"spacing_mm": 1.0}}, mid_sagittal_mm=16.0)
    assert generic.shape == (2 * (2 + 2),) and np.linalg.norm(generic) == pytest.approx(1.0)


# ---------------------------------------------------------------------- the score cache
def _volume(seed: int) -> Volume:
    """A small noise scan (6 thick sagittal slices: every slice is a coarse one, so prediction is quick)."""
    array = np.random.default_rng(seed).integers(0, 500, (6, 48, 48)).astype(np.int16)
    return Volume(array, VolumeGeometry(np.diag([8.0, 1.0, 1.0, 1.0]), array.shape, "noise"), Path(f"n{seed}.nii.gz"))


def _ranked(store: AnnotationStore, **options) -> Ranking:
    """Rank a store's cases on the CPU without perturbed runs (the cache does not depend on them)."""
    return run_steps(score_store_steps(store, device="cpu", perturbations=(), **options))


@pytest.fixture
def counted(monkeypatch) -> dict[str, list[str]]:
    """Which volumes the scorer and the embedder actually ran on (by shape and first voxel)."""
    calls: dict[str, list[str]] = {"scored": [], "embedded": []}
    real_score, real_embed = ranking.score_volume_steps, ranking.embed_volume

    def score(volume, *args, **kwargs):
        calls["scored"].append(volume.path.name)
        return real_score(volume, *args, **kwargs)

    def embed(volume, *args, **kwargs):
        calls["embedded"].append(volume.path.name)
        return real_embed(volume, *args, **kwargs)

    monkeypatch.setattr(ranking, "score_volume_steps", score)
    monkeypatch.setattr(ranking, "embed_volume", embed)
    return calls


def _store() -> AnnotationStore:
    store = AnnotationStore.open(f"memory://active-{uuid.uuid4().hex}", create=True)
    store.add_case(_volume(0), "scan-0")
    store.add_case(_volume(1), "scan-1")
    store.add_case(_volume(2), "scan-2", points=[LabelledPoint("L3", (3.0, 24.0, 24.0))], status="verified")
    return store


def test_scores_are_cached_per_model_and_only_new_cases_are_scored_again(counted, tmp_path):
    store = _store()
    first = _ranked(store, strategy="uncertainty")
    assert sorted(counted["scored"]) == ["n0.nii.gz", "n1.nii.gz"]  # the verified case is not scored
    assert [c.case_id for c in first.cases] == ["scan-0", "scan-1"]
    assert first.cases[0].reason == "no disc or vertebra found"  # noise: the model finds no spine
    assert set(store.cached_scores(first.model)["cases"]) == {"scan-0", "scan-1"}

    again = _ranked(store, strategy="uncertainty")
    assert len(counted["scored"]) == 2 and again.cases == first.cases  # all from the cache

    store.add_case(_volume(3), "scan-3")
    _ranked(store, strategy="uncertainty")
    assert counted["scored"][2:] == ["n3.nii.gz"]

    # diversity also needs the verified case's embedding: computed once, then cached too
    diverse = _ranked(store, strategy="uncertainty+diversity")
    assert counted["embedded"][-1] == "n2.nii.gz" and len(counted["scored"]) == 3
    assert {c.case_id for c in diverse.cases} == {"scan-0", "scan-1", "scan-3"}
    _ranked(store, strategy="uncertainty+diversity")
    assert counted["embedded"].count("n2.nii.gz") == 1

    # a fine-tuned model (other weights) scores everything afresh, under its own key
    model, card = load_checkpoint(find_model_dir(None))
    with torch.no_grad():
        model.heatmap.bias += 0.01
    tuned = tmp_path / "tuned"
    save_checkpoint(tuned, model, card["name"], model.config, labels=card["labels"], input_spec=card["input"])
    retuned = _ranked(store, model=str(tuned), strategy="uncertainty")
    assert retuned.model != first.model and model_key(load_checkpoint(tuned)[1]) == retuned.model
    assert sorted(counted["scored"][3:]) == ["n0.nii.gz", "n1.nii.gz", "n3.nii.gz"]
    assert store.cached_scores(first.model) is not None  # the old model's scores stay for the old model


def test_a_cache_of_another_scoring_version_or_image_is_not_trusted(counted):
    store = _store()
    first = _ranked(store)
    payload = store.cached_scores(first.model)
    store.cache_scores(first.model, {**payload, "version": payload["version"] + 1})
    _ranked(store)
    assert len(counted["scored"]) == 4

    cache = ScoreCache(store, first.model)
    assert cache.get("scan-0", store.case("scan-0").image_sha256) is not None
    assert cache.get("scan-0", "0" * 64) is None
    cache.put("scan-0", CachedCase("0" * 64))  # an entry computed from another image is stale
    cache.save()
    _ranked(store)
    assert counted["scored"][4:] == ["n0.nii.gz"]


def test_a_store_case_the_chain_checks_say_to_fix_ranks_first_also_from_the_cache(monkeypatch):
    """scan-1 scores low but misses a level; scan-0 scores high with nothing to fix as a whole."""
    real = ranking.score_volume_steps

    def score(volume, *args, **kwargs):
        job = real(volume, *args, **kwargs)

        def body(tally):
            scored = yield from tally.run(job)
            if volume.path.name != "n1.nii.gz":
                return replace(scored, score=0.95, reason="L3 weak (0.05 peak)", findings=())
            return replace(scored, score=0.3, findings=(Finding(0.9, "L4 missing between L3 and L5", "L4", True),))

        return Job(job.total, body)

    monkeypatch.setattr(ranking, "score_volume_steps", score)
    store = _store()
    first = _ranked(store)
    assert [(c.case_id, c.score) for c in first.cases] == [("scan-1", pytest.approx(0.3)), ("scan-0", 0.95)]
    monkeypatch.setattr(ranking, "score_volume_steps", real)
    assert _ranked(store).case_ids() == ["scan-1", "scan-0"]  # the cache keeps what the checks found


def test_ranking_a_store_with_an_unknown_strategy_is_refused():
    with pytest.raises(RankingError, match="unknown ranking strategy 'oldest'"):
        run_steps(score_store_steps(_store(), strategy="oldest"))


# ---------------------------------------------------------------------- levels marked absent
def test_a_level_the_researcher_marked_absent_is_never_missing_nor_given_a_placeholder():
    """A sacralised L5: no L5-S1 disc. The case's revision says so; the chain then ends at L5."""
    spine = {n: p for n, p in _spine().items() if n != "L5-S1"}
    assert [p.level for p in check_chain(spine, EXTENT, _prior()).placeholders] == ["L5-S1"]
    assert check_chain(spine, EXTENT, _prior(), absent={"l5s1"}) == Chain()  # nothing flagged, not even L5
    gap = {n: p for n, p in _spine().items() if n not in ("L3", "L3-L4")}
    chain = check_chain(gap, EXTENT, _prior(), absent={"L3-L4"})  # only the marked level is spared
    assert [p.level for p in chain.placeholders] == ["L3"] and [f.level for f in chain.case] == ["L3"]

    scored = assess(_prediction(spine), [_prediction(spine)] * 3, VIEW, _prior(), absent={"L5-S1"})
    assert scored.placeholders == () and "L5-S1" not in scored.reason


def test_on_a_sacralised_spine_names_are_counted_from_l5_with_the_absent_l5_s1_skipped():
    """L5-S1 marked absent: L5 sits right on the sacrum, and the count from the sacrum starts there."""
    sacral = {n: p for n, p in _spine().items() if n != "L5-S1"}
    assert check_chain(sacral, EXTENT, _prior(), absent={"L5-S1"}) == Chain()  # named right: nothing off by one

    # the network lost count above L4: the real L3-L4 is called L2-L3, L3 is called L2, and so on
    named = ["L1", "L1-L2", "L2", "L2-L3", "L4", "L4-L5", "L5"]
    spine = {name: (20.0 + STEP_MM * i, 50.0) for i, name in enumerate(named)}
    chain = check_chain(spine, EXTENT, _prior(), absent={"L5-S1"})
    assert {n: f.reason for n, f in chain.points.items()} == {
        name: f"names one level off from the sacrum: {name} would be {truth}"
        for name, truth in zip(named[:4], ["L2", "L2-L3", "L3", "L3-L4"], strict=True)
    }
    assert [f.reason for f in chain.case] == ["names one level off from the sacrum: L2-L3 would be L3-L4"]
    assert chain.placeholders == ()


def test_ranking_scores_a_case_with_its_head_revisions_absent_levels_and_again_when_they_change(monkeypatch):
    seen: list[tuple[str, tuple[str, ...]]] = []
    scorer = ranking.score_volume_steps

    def score(volume, net, card, where, perturbations, absent):
        seen.append((volume.path.name, tuple(absent)))
        return scorer(volume, net, card, where, perturbations, absent)

    monkeypatch.setattr(ranking, "score_volume_steps", score)
    store = _store()
    store.save_revision("scan-0", [LabelledPoint("L5", (3.0, 24.0, 24.0))], None, absent=["L5-S1"])
    first = _ranked(store)
    assert sorted(seen) == [("n0.nii.gz", ("L5-S1",)), ("n1.nii.gz", ())]
    _ranked(store)
    assert len(seen) == 2  # cached with its absent levels
    store.save_revision("scan-0", [LabelledPoint("L5", (3.0, 24.0, 24.0))], None)  # the mark taken back
    _ranked(store)
    assert seen[2:] == [("n0.nii.gz", ())]
    assert ScoreCache(store, first.model).get("scan-0", store.case("scan-0").image_sha256, ("L5-S1",)) is None
