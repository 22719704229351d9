"""Naming candidates with the mean spine skeleton (Azad 2021 §3.3, generalised).

Synthetic lumbar-like spines: vertebrae and discs alternate every ~17 mm along a lordotic
curve (the middle lies anterior of the ends), seen under random similarity transforms with
~1 mm annotation noise. Candidates are placed on a slice resampled to 0.8 mm pixels.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from napari_ivd import inference
from napari_ivd.anatomy import structure
from napari_ivd.models.decode import Candidate
from napari_ivd.skeleton import (
    SkeletonPrior,
    anchor_on_junction,
    anchor_on_sacrum,
    extend_chain,
    fill_gaps,
    gaps,
    hypothesis_cost,
    search,
)

LUMBAR = (
    "T11", "T11-T12", "T12", "T12-L1", "L1", "L1-L2", "L2",
    "L2-L3", "L3", "L3-L4", "L4", "L4-L5", "L5", "L5-S1",
)  # fmt: skip
STEP_MM = 17.0
SPACING_MM = 0.8


def _spine_mm(
    rng: np.random.Generator,
    rotation_deg: float = 0.0,
    scale: float = 1.0,
    noise_mm: float = 1.0,
    labels: tuple[str, ...] = LUMBAR,
) -> dict[str, tuple[float, float]]:
    """A lumbar-like spine in mm (row down, col posterior) under a similarity transform."""
    k = np.array([LUMBAR.index(name) for name in labels], dtype=float)
    arc_mm = k * STEP_MM * rng.uniform(0.95, 1.05)
    half_mm = (len(LUMBAR) - 1) * STEP_MM / 2
    lordosis_mm = 18.0 * rng.uniform(0.8, 1.2)
    row = arc_mm - half_mm
    col = lordosis_mm * (row / half_mm) ** 2  # ends posterior, middle (L1-L2) anterior
    z = (row + 1j * col) * scale * np.exp(1j * math.radians(rotation_deg))
    z = z + complex(rng.uniform(-10, 10), rng.uniform(-10, 10))
    z = z + rng.normal(0, noise_mm, z.shape) + 1j * rng.normal(0, noise_mm, z.shape)
    return {name: (float(p.real), float(p.imag)) for name, p in zip(labels, z, strict=True)}


@pytest.fixture(scope="module")
def prior() -> SkeletonPrior:
    rng = np.random.default_rng(2021)
    shapes = []
    for i in range(16):
        shape = _spine_mm(rng, rotation_deg=rng.uniform(-10, 10), scale=rng.uniform(0.9, 1.1))
        if i % 4 == 1:  # field of view ends above the sacrum
            shape = {name: rc for name, rc in shape.items() if LUMBAR.index(name) < 10}
        elif i % 4 == 2:  # field of view starts at L1
            shape = {name: rc for name, rc in shape.items() if LUMBAR.index(name) >= 4}
        shapes.append(shape)
    return SkeletonPrior.fit(shapes)


def _patient(seed: int = 5, rotation_deg: float = 3.0, scale: float = 1.0) -> dict[str, tuple[float, float]]:
    """A new spine placed on a 0.8 mm slice: label -> (row, col) in input pixels."""
    points_mm = _spine_mm(np.random.default_rng(seed), rotation_deg=rotation_deg, scale=scale)
    return {name: ((r + 160.0) / SPACING_MM, (c + 100.0) / SPACING_MM) for name, (r, c) in points_mm.items()}


def _candidates(points_px: dict[str, tuple[float, float]], seed: int = 0) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    return [Candidate(name, r, c, float(rng.uniform(0.55, 0.95))) for name, (r, c) in points_px.items()]


def _named_rows(named: dict[str, Candidate]) -> list[float]:
    return [c.row for c in named.values()]


def test_prior_learns_a_lordotic_lumbar_skeleton_from_partial_training_spines(prior):
    assert prior.labels == LUMBAR
    assert prior.counts[0] == 12 and prior.counts[-1] == 12 and prior.counts[6] == 16  # partial FOVs
    mean = np.asarray(prior.mean_steps)
    steps = np.hypot(*np.diff(mean, axis=0).T)
    np.testing.assert_allclose(steps.mean(), 1.0)  # normalised: one step between neighbours
    assert np.all(np.diff(mean[:, 0]) > 0)  # cranio-caudal = down the rows
    assert mean[6, 1] < min(mean[0, 1], mean[-1, 1]) - 0.5  # lordosis: middle anterior of ends
    assert 15.5 < prior.step_mm < 18.5
    assert all(0.02 < s < 0.15 for s in prior.spread_steps)  # ~1 mm noise over a 17 mm step


def test_clean_detections_of_every_level_are_all_named(prior):
    truth = _patient()
    named = search(_candidates(truth), prior, spacing_mm=SPACING_MM)
    assert list(named) == list(LUMBAR)
    assert all(named[name].row == truth[name][0] for name in LUMBAR)


def test_a_missed_disc_stays_absent_and_the_other_levels_are_right(prior):
    truth = _patient(seed=11)
    candidates = [c for c in _candidates(truth) if c.label != "L3-L4"]
    # The L3-L4 channel only fires weakly, far behind the spine (a facet joint, say).
    l3_l4_row, l3_l4_col = truth["L3-L4"]
    candidates.append(Candidate("L3-L4", l3_l4_row, l3_l4_col + 45 / SPACING_MM, 0.3))

    named = search(candidates, prior, spacing_mm=SPACING_MM)

    assert "L3-L4" not in named
    assert list(named) == [name for name in LUMBAR if name != "L3-L4"]
    assert all(named[name].row == truth[name][0] for name in named)


def test_a_confident_false_detection_off_the_skeleton_loses_to_the_true_one(prior):
    truth = _patient(seed=12)
    candidates = _candidates(truth)
    row, col = truth["L4"]
    decoy = Candidate("L4", row + 4 / SPACING_MM, col - 30 / SPACING_MM, 0.99)  # in the abdomen
    candidates.append(decoy)

    named = search(candidates, prior, spacing_mm=SPACING_MM)

    assert list(named) == list(LUMBAR)
    assert named["L4"] != decoy and named["L4"].col == col


def test_a_field_of_view_starting_at_L2_names_nothing_above_it(prior):
    truth = _patient(seed=13)
    visible = {name: rc for name, rc in truth.items() if LUMBAR.index(name) >= LUMBAR.index("L2")}
    candidates = _candidates(visible)
    # The upper channels fire on what they can see: T11 and T12-L1 weakly on lower levels,
    # L1 and L1-L2 on the cut-off top edge of the image, a few mm above L2.
    candidates += [
        Candidate("T11", *truth["L3"], 0.2),
        Candidate("T12-L1", *truth["L4-L5"], 0.25),
        Candidate("L1", truth["L2"][0] - 6 / SPACING_MM, truth["L2"][1], 0.3),
        Candidate("L1-L2", truth["L2"][0] - 3 / SPACING_MM, truth["L2"][1] + 2, 0.25),
    ]

    named = search(candidates, prior, spacing_mm=SPACING_MM)

    assert list(named) == list(visible)  # starts at L2: no T11 ... L1-L2 invented
    assert all(named[name].row == visible[name][0] for name in named)


def test_a_candidate_above_its_cranial_neighbour_is_rejected(prior):
    truth = _patient(seed=14)
    candidates = [c for c in _candidates(truth) if c.label != "L3"]
    # L3's only (confident) detection sits above the L2-L3 disc: out of order.
    candidates.append(Candidate("L3", truth["L2-L3"][0] - 2 / SPACING_MM, truth["L2-L3"][1], 0.95))

    named = search(candidates, prior, spacing_mm=SPACING_MM)

    assert "L3" not in named
    assert named["L2-L3"].row == truth["L2-L3"][0]
    assert _named_rows(named) == sorted(_named_rows(named)) and len(set(_named_rows(named))) == len(named)


def test_two_detections_named_upside_down_are_not_both_accepted(prior):
    # Two points fit any similarity exactly (a 180° turn included), so only the cranio-caudal
    # order can tell that L4-L5 cannot lie 16 mm above L4.
    l4 = Candidate("L4", 100.0, 50.0, 0.9)
    l4_l5 = Candidate("L4-L5", 80.0, 50.0, 0.8)

    named = search([l4, l4_l5], prior, spacing_mm=SPACING_MM)

    assert named == {"L4": l4}  # the surer one alone
    assert hypothesis_cost({"L4": l4, "L4-L5": l4_l5}, [l4, l4_l5], prior, SPACING_MM) == math.inf


def test_a_rotated_smaller_spine_is_named_as_well_as_an_upright_one(prior):
    truth = _patient(seed=15, rotation_deg=15.0, scale=0.8)
    candidates = _candidates(truth)
    row, col = truth["L1"]
    decoy = Candidate("L1", row + 3 / SPACING_MM, col + 25 / SPACING_MM, 0.97)
    candidates.append(decoy)

    named = search(candidates, prior, spacing_mm=SPACING_MM)

    assert list(named) == list(LUMBAR)
    assert named["L1"] != decoy


def test_cost_does_not_change_when_the_whole_picture_is_rotated_or_scaled_without_size_prior(prior):
    truth = _patient(seed=16)
    centre = np.mean([complex(r, c) for r, c in truth.values()])
    transform = 0.8 * np.exp(1j * math.radians(15))
    moved = {}
    for name, (r, c) in truth.items():
        z = (complex(r, c) - centre) * transform + centre
        moved[name] = (z.real, z.imag)
    original, rotated = _candidates(truth), _candidates(moved)

    cost = hypothesis_cost({c.label: c for c in original}, original, prior, spacing_mm=SPACING_MM, scale_log_sd=None)
    cost_moved = hypothesis_cost(
        {c.label: c for c in rotated}, rotated, prior, spacing_mm=SPACING_MM, scale_log_sd=None
    )

    assert cost == pytest.approx(cost_moved, rel=1e-9)


def test_network_naming_one_level_low_with_weaker_scores_does_not_shift_the_result(prior):
    truth = _patient(seed=17)
    candidates = _candidates(truth)
    # Every channel also fires, less surely, on the structure of its kind one level lower.
    for upper, lower in itertools.pairwise(LUMBAR[::2]):
        candidates.append(Candidate(upper, *truth[lower], 0.4))
    for upper, lower in itertools.pairwise(LUMBAR[1::2]):
        candidates.append(Candidate(upper, *truth[lower], 0.4))

    named = search(candidates, prior, spacing_mm=SPACING_MM)

    assert list(named) == list(LUMBAR)
    assert all(named[name].row == truth[name][0] for name in LUMBAR)


def test_beam_search_finds_the_exhaustive_optimum_on_a_small_problem(prior):
    rng = np.random.default_rng(18)
    truth = _patient(seed=18)
    labels = LUMBAR[6:12]
    candidates = []
    for name in labels:
        r, c = truth[name]
        candidates.append(Candidate(name, r, c, float(rng.uniform(0.3, 0.9))))
        for _ in range(2):  # decoys near and far
            dr, dc = rng.normal(0, 12 / SPACING_MM, 2)
            candidates.append(Candidate(name, r + dr, c + dc, float(rng.uniform(0.2, 0.99))))
    by_label = {name: [c for c in candidates if c.label == name] for name in labels}

    best_cost, best = math.inf, {}
    for picks in itertools.product(*[[None, *by_label[name]] for name in labels]):
        chosen = {name: c for name, c in zip(labels, picks, strict=True) if c is not None}
        cost = hypothesis_cost(chosen, candidates, prior, spacing_mm=SPACING_MM)
        if cost < best_cost:
            best_cost, best = cost, chosen

    named = search(candidates, prior, spacing_mm=SPACING_MM, beam_width=50)

    assert named == best
    assert hypothesis_cost(named, candidates, prior, spacing_mm=SPACING_MM) == pytest.approx(best_cost)


def test_no_candidates_or_unknown_labels_name_nothing(prior):
    assert search([], prior) == {}
    assert search([Candidate("C5", 10.0, 10.0, 0.9)], prior) == {}


def test_prior_survives_a_json_round_trip_through_a_model_card(prior):
    card = json.loads(json.dumps({"skeleton": prior.to_dict()}))
    restored = SkeletonPrior.from_dict(card["skeleton"])
    assert restored == prior
    assert restored.labels == LUMBAR and all(structure(name).name == name for name in restored.labels)


def test_prior_from_a_card_with_unknown_keys_or_version_is_refused(prior):
    data = prior.to_dict()
    with pytest.raises(ValueError, match="unknown keys"):
        SkeletonPrior.from_dict({**data, "typo": 1})
    with pytest.raises(ValueError, match="format_version"):
        SkeletonPrior.from_dict({**data, "format_version": 99})


def _lost_count(truth: dict[str, tuple[float, float]], first_wrong: str) -> list[Candidate]:
    """The network's view of ``truth`` when it loses count at ``first_wrong``: from there down,
    every structure carries the name of the one a level above (two places up the list)."""
    cut = LUMBAR.index(first_wrong)
    candidates = []
    for name, (row, col) in truth.items():
        i = LUMBAR.index(name)
        candidates.append(Candidate(LUMBAR[i - 2] if i >= cut else name, row, col, 0.9))
    return candidates


def test_a_network_that_loses_count_part_way_down_gets_the_lower_run_named_by_its_place(prior):
    truth = _patient(seed=21)
    candidates = _lost_count(truth, "L3")

    searched = search(candidates, prior, spacing_mm=SPACING_MM)
    named = extend_chain(searched, candidates, LUMBAR, renamed_score=0.5)

    assert "L5" not in searched  # the search alone drops the run whose names were taken
    assert list(named) == list(LUMBAR)
    assert all(named[name].row == truth[name][0] for name in LUMBAR)
    assert all(named[name].score == 0.45 for name in LUMBAR if name not in searched)  # marked for review
    assert all(named[name] == searched[name] for name in searched)  # the search's answer stands


def test_growth_stops_at_a_gap_and_ignores_a_detection_off_the_chain(prior):
    truth = _patient(seed=22)
    candidates = [c for c in _lost_count(truth, "L3") if c.row != truth["L4"][0]]  # L4 not detected
    row, col = truth["L5"]
    candidates.append(Candidate("T12", row, col - 40 / SPACING_MM, 0.99))  # in the abdomen

    searched = search(candidates, prior, spacing_mm=SPACING_MM)
    named = extend_chain(searched, candidates, LUMBAR)

    assert "L4" not in named and "L5" not in named and "L5-S1" not in named  # nothing past the gap
    assert all(named[name].row == truth[name][0] for name in named)


def test_growth_goes_up_too_and_needs_two_chosen_structures(prior):
    truth = _patient(seed=23)
    upper = [Candidate(LUMBAR[LUMBAR.index(n) + 2], r, c, 0.9) for n, (r, c) in truth.items() if LUMBAR.index(n) < 6]
    lower = [Candidate(n, r, c, 0.9) for n, (r, c) in truth.items() if LUMBAR.index(n) >= 6]
    candidates = upper + lower  # the network's upper names are one level too low

    named = extend_chain(search(candidates, prior, spacing_mm=SPACING_MM), candidates, LUMBAR)

    assert list(named) == list(LUMBAR)
    assert all(named[name].row == truth[name][0] for name in LUMBAR)
    one = {"L4": lower[4]}
    assert extend_chain(one, candidates, LUMBAR) == one


def test_weak_or_misnamed_detections_in_a_gap_take_the_levels_missing_there():
    """A site unlike the training data: inside the chain, L2 peaks weakly under its own name, the L3 body
    under L4's and the L1-L2 disc not at all. Each detected one fills its gap; the undetected stays a gap."""
    truth = _patient(seed=24)
    chain = {n: Candidate(n, r, c, 0.8) for n, (r, c) in truth.items() if n not in ("L1-L2", "L2", "L3")}
    weak = [
        Candidate("L2", *truth["L2"], 0.08),
        Candidate("L4", *truth["L3"], 0.06),
        Candidate("T12", truth["L2"][0], truth["L2"][1] - 40 / SPACING_MM, 0.9),  # in the abdomen
    ]
    assert gaps(chain, LUMBAR) == ["L1-L2", "L2", "L3"]

    named = fill_gaps(chain, list(chain.values()) + weak, LUMBAR, renamed_score=0.5)

    assert list(named) == [n for n in LUMBAR if n != "L1-L2"]  # cranio-caudal, nothing where nothing was seen
    assert (named["L2"].row, named["L2"].col, named["L2"].score) == (*truth["L2"], 0.08)  # its own name: its score
    assert (named["L3"].row, named["L3"].col, named["L3"].score) == (*truth["L3"], 0.03)  # renamed: half its score
    assert all(named[n] == chain[n] for n in chain)  # the chain around the gaps stands
    assert gaps(named, LUMBAR) == ["L1-L2"]


def test_a_gap_is_not_filled_from_a_detection_off_its_place_or_one_already_named():
    truth = _patient(seed=25)
    chain = {n: Candidate(n, r, c, 0.8) for n, (r, c) in truth.items() if n != "L3"}
    step = abs(complex(*truth["L4"]) - complex(*truth["L2"])) / 4  # one label spacing, in pixels
    off_place = Candidate("L3", truth["L3"][0], truth["L3"][1] + 0.5 * step, 0.9)  # half a level anterior
    disc_above = complex(*truth["L2-L3"]) + 0.45 * (complex(*truth["L3"]) - complex(*truth["L2-L3"]))
    duplicate = Candidate("L3", disc_above.real, disc_above.imag, 0.9)  # nearer the named disc above than L3

    assert fill_gaps(chain, [*chain.values(), off_place], LUMBAR) == chain
    assert fill_gaps(chain, [*chain.values(), duplicate], LUMBAR, tolerance=0.6) == chain  # near L3, too near L2-L3
    assert fill_gaps({}, [off_place], LUMBAR) == {} and gaps({}, LUMBAR) == []


def _network_output(points_px: dict[str, tuple[float, float]], peak: dict[str, float]) -> tuple[np.ndarray, ...]:
    """Heatmaps (one channel per LUMBAR label, Gaussian peaks of height ``peak``) and exact offsets, stride 2."""
    shape = (220, 130)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    heat = np.zeros((len(LUMBAR), *shape))
    offset = np.zeros((2 * len(LUMBAR), *shape))
    for k, name in enumerate(LUMBAR):
        row, col = (v / 2 - 0.25 for v in points_px[name])  # input -> output pixels at stride 2
        heat[k] = peak.get(name, 0.8) * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * 1.5**2))
        offset[2 * k], offset[2 * k + 1] = row - rows, col - cols
    return heat, offset


def test_prediction_names_a_weak_peak_inside_the_chain_and_one_continuing_it_under_its_own_name(prior, monkeypatch):
    truth = _patient(seed=26)
    heat, offset = _network_output(truth, {"L2": 0.07, "L5-S1": 0.07})
    named, _ = inference.name_points(heat, offset, list(LUMBAR), 2, prior, SPACING_MM, (440, 260))

    assert list(named) == list(LUMBAR)  # L2 between L1-L2 and L2-L3; L5-S1 where the chain goes on
    for name in ("L2", "L5-S1"):
        assert abs(named[name].row - truth[name][0]) < 1 and named[name].score == pytest.approx(0.07, abs=0.005)
    monkeypatch.setattr(inference, "GAP_MIN_SCORE", inference.MIN_SCORE)
    named = inference.name_points(heat, offset, list(LUMBAR), 2, prior, SPACING_MM, (440, 260))[0]
    assert "L2" not in named and "L5-S1" not in named


def test_a_weak_peak_continues_the_chain_only_under_its_own_name_and_in_place():
    """Past the chain's ends nothing vouches for a renamed weak peak, or for one off the chain's course."""
    truth = _patient(seed=28)
    chain = {n: Candidate(n, r, c, 0.8) for n, (r, c) in truth.items() if n not in ("T11", "T11-T12", "L5-S1")}
    step = abs(complex(*truth["L4"]) - complex(*truth["L2"])) / 4  # one label spacing, in pixels
    weaker = [
        Candidate("L5-S1", *truth["L5-S1"], 0.07),  # its own name, where the chain expects it
        Candidate("T12", *truth["T11-T12"], 0.07),  # another name
        Candidate("T11", truth["T11"][0], truth["T11"][1] + 0.5 * step, 0.07),  # half a level anterior
    ]

    named = extend_chain(chain, list(chain.values()), LUMBAR, weaker=weaker)

    assert list(named) == list(LUMBAR[2:])
    assert (named["L5-S1"].row, named["L5-S1"].col, named["L5-S1"].score) == (*truth["L5-S1"], 0.07)
    assert all(named[n] == chain[n] for n in chain)
    assert extend_chain(chain, list(chain.values()), LUMBAR) == chain  # the search's detections alone end at L5


def test_a_weak_peak_never_turns_a_doubtful_pair_into_a_spine(prior):
    """Two doubtful detections are no spine (see ``MIN_STRUCTURES``); a weak third one must not make them one."""
    truth = _patient(seed=29)
    heat, offset = _network_output(truth, {n: 0.0 for n in LUMBAR} | {"L3": 0.3, "L3-L4": 0.3, "L4": 0.07})

    assert inference.name_points(heat, offset, list(LUMBAR), 2, prior, SPACING_MM, (440, 260)) == ({}, False)


def test_three_doubtful_structures_are_no_spine_but_four_are(prior):
    """A lumbar model's three weak peaks on a cervical scan name nothing; a fourth makes them a chain."""
    truth = _patient(seed=29)
    three = {n: 0.0 for n in LUMBAR} | {"L3": 0.3, "L3-L4": 0.4, "L4": 0.3}
    heat, offset = _network_output(truth, three)
    assert inference.name_points(heat, offset, list(LUMBAR), 2, prior, SPACING_MM, (440, 260)) == ({}, False)

    heat, offset = _network_output(truth, three | {"L4-L5": 0.3})
    named, _ = inference.name_points(heat, offset, list(LUMBAR), 2, prior, SPACING_MM, (440, 260))
    assert list(named) == ["L3", "L3-L4", "L4", "L4-L5"]


def _also_called(heat: np.ndarray, offset: np.ndarray, name: str, other: str) -> None:
    """Let channel ``other`` also see ``name``'s peak (with its offsets), as a network unsure of the name does."""
    k, o = LUMBAR.index(name), LUMBAR.index(other)
    theirs = heat[k] > heat[o]
    heat[o] = np.maximum(heat[o], heat[k])
    offset[2 * o : 2 * o + 2] = np.where(theirs, offset[2 * k : 2 * k + 2], offset[2 * o : 2 * o + 2])


def test_a_disc_whose_probability_is_split_over_names_fills_its_gap_but_no_chain_end(prior, monkeypatch):
    """The bundled sample's L1-L2: the disc is plain, but each disc channel gives it too little to vote."""
    truth = _patient(seed=27)
    heat, offset = _network_output(truth, {"L2-L3": 0.035, "L5-S1": 0.035})
    _also_called(heat, offset, "L2-L3", "L1-L2")
    _also_called(heat, offset, "L5-S1", "L4-L5")
    named, _ = inference.name_points(heat, offset, list(LUMBAR), 2, prior, SPACING_MM, (440, 260))

    assert list(named) == list(LUMBAR[:-1])  # the chain vouches for the gap, not for a new end
    assert abs(complex(named["L2-L3"].row, named["L2-L3"].col) - complex(*truth["L2-L3"])) < 1
    assert named["L2-L3"].score == pytest.approx(0.5 * (1 - (1 - 0.035) ** 2), abs=0.005)  # pooled, then discounted
    monkeypatch.setattr(inference, "_kind_candidates", lambda *args: [])
    assert "L2-L3" not in inference.name_points(heat, offset, list(LUMBAR), 2, prior, SPACING_MM, (440, 260))[0]


def test_a_grown_prior_keeps_its_means_and_places_new_levels_where_the_training_shapes_put_them(prior):
    """Fine-tuning to new levels: the parent's skeleton stays, new labels come from the cases that show them."""
    rng = np.random.default_rng(7)
    lower = LUMBAR[4:]  # the parent knows L1 ... L5-S1 only
    parent = SkeletonPrior.fit([{n: p for n, p in _spine_mm(rng).items() if n in lower} for _ in range(12)])
    shapes = [{n: p for n, p in _spine_mm(rng).items() if LUMBAR.index(n) < 7} for _ in range(3)]  # T11 ... L2
    grown = parent.grown(LUMBAR, shapes)
    assert grown.labels == LUMBAR
    kept = [grown.labels.index(n) for n in lower]
    assert [grown.mean_steps[i] for i in kept] == list(parent.mean_steps)
    assert [grown.spread_steps[i] for i in kept] == list(parent.spread_steps)
    assert grown.counts[:4] == (3, 3, 3, 3) and grown.step_mm == parent.step_mm
    # the new levels lie where the full prior has them, relative to the shared ones (within a fifth of a step)
    full = prior.mean_complex()
    a, b = _similarity_onto(full[4:], parent.mean_complex())
    np.testing.assert_allclose(grown.mean_complex()[:4], a * full[:4] + b, atol=0.2)
    assert parent.grown(lower, shapes) is parent


def test_a_grown_prior_places_levels_no_case_connects_above_it_in_their_own_layout():
    """Cervical levels on a lumbar prior: extrapolated up the rows, spaced as the case shows them (here unevenly)."""
    rng = np.random.default_rng(3)
    parent = SkeletonPrior.fit([_spine_mm(rng) for _ in range(6)])
    cervical = {"C3": (0.0, 0.0), "C4": (18.0, 1.0), "C5": (54.0, 2.0)}  # shares no level with the prior
    grown = parent.grown(["C3", "C4", "C5", *LUMBAR], [cervical])
    assert grown.labels == ("C3", "C4", "C5", *LUMBAR)
    rows = np.asarray(grown.mean_steps)[:, 0]
    assert rows[0] < rows[1] < rows[2] < rows[3]  # cranial of T11, in order
    np.testing.assert_allclose(rows[2] - rows[1], 2 * (rows[1] - rows[0]), rtol=0.05)  # the case's own spacing
    assert grown.counts[:3] == (1, 1, 1)
    assert SkeletonPrior.from_dict(grown.to_dict()) == grown


WITH_SACRUM = (*LUMBAR, "S1")


def _with_sacrum(truth: dict[str, tuple[float, float]], bend_deg: float = 25.0) -> dict[str, tuple[float, float]]:
    """``truth`` plus the S1 body: one L5→L5-S1 spacing below L5-S1, bent posteriorly (lordosis)."""
    l5, disc = complex(*truth["L5"]), complex(*truth["L5-S1"])
    s1 = disc + (disc - l5) * np.exp(1j * math.radians(bend_deg))
    return truth | {"S1": (s1.real, s1.imag)}


def _named_up(truth: dict[str, tuple[float, float]], levels: int = 1) -> list[Candidate]:
    """The network's lumbar chain named ``levels`` levels too high throughout (L5-S1 called L4-L5, ...)."""
    return [
        Candidate(LUMBAR[LUMBAR.index(n) - 2 * levels], r, c, 0.9)
        for n, (r, c) in truth.items()
        if n in LUMBAR and LUMBAR.index(n) >= 2 * levels
    ]


def _sacrum(truth: dict[str, tuple[float, float]], score: float = 0.8) -> Candidate:
    return Candidate("S1", *truth["S1"], score)


def test_a_chain_named_one_level_high_is_renamed_from_a_confident_sacrum_below_it():
    truth = _with_sacrum(_patient(seed=31))
    chain = {c.label: c for c in _named_up(truth)}
    weak_elsewhere = Candidate("S1", *truth["L3"], 0.6)  # a weaker S1 response mid-spine is not the peak

    named, renamed = anchor_on_sacrum(chain, [*chain.values(), _sacrum(truth), weak_elsewhere], WITH_SACRUM)

    assert renamed
    assert list(named) == list(WITH_SACRUM[2:])  # T11 and T11-T12 went above the field of view
    assert all((named[n].row, named[n].col) == truth[n] for n in named)
    assert named["S1"].score == 0.8 and named["L5-S1"].score == 0.9  # the detections' own scores


def test_the_sacrum_named_as_the_next_lumbar_level_becomes_S1_once():
    truth = _with_sacrum(_patient(seed=32))
    candidates = [*_named_up(truth), Candidate("L5", *truth["S1"], 0.45), _sacrum(truth)]
    chain = {c.label: c for c in candidates if c.label != "S1"}  # extend_chain took the sacrum for L5

    named, renamed = anchor_on_sacrum(chain, candidates, WITH_SACRUM)

    assert renamed and named["S1"].score == 0.8
    assert all((named[n].row, named[n].col) == truth[n] for n in named)


def test_a_chain_named_two_levels_high_is_renamed_too():
    truth = _with_sacrum(_patient(seed=33))
    chain = {c.label: c for c in _named_up(truth, levels=2)}

    named, renamed = anchor_on_sacrum(chain, [*chain.values(), _sacrum(truth)], WITH_SACRUM)

    assert renamed and list(named) == list(WITH_SACRUM[4:])
    assert all((named[n].row, named[n].col) == truth[n] for n in named)


def test_a_right_chain_keeps_its_names_and_gains_the_sacrum():
    truth = _with_sacrum(_patient(seed=34))
    chain = {c.label: c for c in _candidates({n: p for n, p in truth.items() if n != "S1"})}

    named, renamed = anchor_on_sacrum(chain, [*chain.values(), _sacrum(truth)], WITH_SACRUM)

    assert not renamed
    assert {n: c for n, c in named.items() if n != "S1"} == chain and named["S1"] == _sacrum(truth)


@pytest.mark.parametrize(
    "case",
    ["weak", "mid-chain", "three steps below", "beside the disc", "chain goes past it", "no S1 label", "no S1"],
)
def test_a_weak_absent_or_misplaced_sacrum_leaves_the_chain_alone(case):
    truth = _with_sacrum(_patient(seed=35))
    chain = {c.label: c for c in _named_up(truth)}
    sacrum, labels = _sacrum(truth), WITH_SACRUM
    if case == "weak":
        sacrum = _sacrum(truth, score=0.3)
    elif case == "mid-chain":
        sacrum = Candidate("S1", *truth["L3"], 0.95)
    elif case == "three steps below":  # the real L5 and L5-S1 were not detected
        chain = {n: c for n, c in chain.items() if n not in ("L4", "L4-L5")}
    elif case == "beside the disc":  # one spacing below, but 90° off the chain's direction
        l5, disc = complex(*truth["L5"]), complex(*truth["L5-S1"])
        beside = disc + (disc - l5) * 1j
        sacrum = Candidate("S1", beside.real, beside.imag, 0.95)
    elif case == "chain goes past it":  # a body named below the lowest disc that is not the sacrum
        l5, disc = complex(*truth["L5"]), complex(*truth["L5-S1"])
        extra = disc + 0.4 * (disc - l5)
        chain["L5"] = Candidate("L5", extra.real, extra.imag, 0.9)
    elif case == "no S1 label":
        labels = LUMBAR
    candidates = [*chain.values()] + ([] if case == "no S1" else [sacrum])

    named, renamed = anchor_on_sacrum(chain, candidates, labels)

    assert not renamed and named == chain and list(named) == list(chain)


def _named_down(truth: dict[str, tuple[float, float]]) -> dict[str, Candidate]:
    """A chain counted one level too low from the top and run past the sacrum: L4 called L5, L5 called S1.

    The names it gives at the bottom are weak in their channels (the network sees L4 there, not L5).
    """
    down = {n: WITH_SACRUM[WITH_SACRUM.index(n) + 2] for n in truth if WITH_SACRUM.index(n) + 2 < len(WITH_SACRUM)}
    return {new: Candidate(new, *truth[n], 0.2 if new in ("L5", "L5-S1", "S1") else 0.9) for n, new in down.items()}


def _junction(truth: dict[str, tuple[float, float]], l5: float = 0.8, disc: float = 0.2, s1: float = 0.25) -> list:
    """What a network that sees the bottom right detects there: L5 confidently, the disc and S1 weakly."""
    return [
        Candidate("L5", *truth["L5"], l5),
        Candidate("L5-S1", *truth["L5-S1"], disc),
        Candidate("S1", *truth["S1"], s1),
    ]


def test_a_chain_run_past_the_sacrum_is_named_from_the_junction_it_passed():
    truth = _with_sacrum(_patient(seed=41))
    chain = _named_down(truth)
    assert (chain["S1"].row, chain["S1"].col) == truth["L5"]  # the L5 body called S1
    assert (chain["L5-S1"].row, chain["L5-S1"].col) == truth["L4-L5"]  # and L4-L5 called L5-S1

    named, renamed = anchor_on_junction(chain, [*chain.values(), *_junction(truth)], WITH_SACRUM)

    assert renamed and list(named) == list(WITH_SACRUM)
    assert all((named[n].row, named[n].col) == truth[n] for n in named)
    assert [named[n].score for n in ("L4-L5", "L5", "L5-S1", "S1")] == [0.2, 0.8, 0.2, 0.25]  # the junction's own


def test_a_chain_named_one_level_high_over_a_weak_sacrum_is_named_from_the_junction():
    truth = _with_sacrum(_patient(seed=42))
    chain = {c.label: c for c in _named_up(truth)}  # the L5 body called L4, L5-S1 called L4-L5
    candidates = [*chain.values(), *_junction(truth)]
    assert anchor_on_sacrum(chain, candidates, WITH_SACRUM) == (chain, False)  # S1 too weak to anchor on

    named, renamed = anchor_on_junction(chain, candidates, WITH_SACRUM)

    assert renamed and list(named) == list(WITH_SACRUM[2:])
    assert all((named[n].row, named[n].col) == truth[n] for n in named)


@pytest.mark.parametrize(
    "case",
    [
        "right chain",
        "weak L5",
        "weak sacrum",
        "no S1",
        "S1 above",
        "S1 stronger at L5",
        "off the chain",
        "below is not it",
        "no S1 label",
    ],
)
def test_a_chain_keeps_its_names_without_a_junction_that_names_it_otherwise(case):
    truth = _with_sacrum(_patient(seed=43))
    chain, labels = _named_down(truth), WITH_SACRUM
    junction = _junction(truth)
    if case == "right chain":
        chain = {n: Candidate(n, *truth[n], 0.9) for n in WITH_SACRUM}
    elif case == "weak L5":
        junction = _junction(truth, l5=0.4)
    elif case == "weak sacrum":
        junction = _junction(truth, disc=0.1, s1=0.1)
    elif case == "no S1":
        junction = junction[:2]
    elif case == "S1 above":  # the S1 peak on the L4 body: no junction in a row
        junction = [*junction[:2], Candidate("S1", *truth["L4"], 0.9)]
    elif case == "S1 stronger at L5":  # the sacrum peaks where the junction's L5 is: that body is S1
        junction = [*junction, Candidate("S1", *truth["L5"], 0.4)]
    elif case == "off the chain":  # a row of junction peaks beside the spine, on no chain vertebra
        shift = 2j * abs(complex(*truth["L5"]) - complex(*truth["L4"]))
        junction = [Candidate(c.label, c.row + shift.real, c.col + shift.imag, c.score) for c in junction]
    elif case == "below is not it":  # the chain holds a structure below the junction's L5 that is not its disc
        chain = {c.label: c for c in _named_up(truth)}
        disc = chain["L4-L5"]
        aside = 0.7 * abs(complex(*truth["L5-S1"]) - complex(*truth["L5"]))  # beyond half a spacing
        chain["L4-L5"] = Candidate("L4-L5", disc.row, disc.col + aside, disc.score)
    elif case == "no S1 label":
        labels = LUMBAR
    named, renamed = anchor_on_junction(chain, [*chain.values(), *junction], labels)

    assert not renamed and named == chain and list(named) == list(chain)


def test_search_extend_and_the_sacrum_name_an_off_by_one_network_right():
    rng = np.random.default_rng(2024)
    shapes = []
    for _ in range(8):
        spine = _spine_mm(rng, rotation_deg=rng.uniform(-8, 8), scale=rng.uniform(0.9, 1.1))
        shapes.append(_with_sacrum(spine, bend_deg=rng.uniform(20, 30)))
    prior = SkeletonPrior.fit(shapes)
    truth = _with_sacrum(_patient(seed=36))
    candidates = [*_named_up(truth), _sacrum(truth, score=0.7)]

    chosen = extend_chain(search(candidates, prior, spacing_mm=SPACING_MM), candidates, WITH_SACRUM)
    named, renamed = anchor_on_sacrum(chosen, candidates, WITH_SACRUM)

    assert any((c.row, c.col) != truth[n] for n, c in chosen.items())  # the search trusted the network's names
    assert renamed and list(named) == list(WITH_SACRUM[2:])
    assert all((named[n].row, named[n].col) == truth[n] for n in named)


def _similarity_onto(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """Least-squares ``dst ≈ a * src + b``."""
    src_c, dst_c = src - src.mean(), dst - dst.mean()
    a = complex((np.conj(src_c) * dst_c).sum() / (np.abs(src_c) ** 2).sum())
    return a, complex(dst.mean() - a * src.mean())
