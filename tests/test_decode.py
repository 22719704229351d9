"""Decoding heatmaps + short-range offsets into candidates (Hough voting), on synthetic maps."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ivd.models.decode import (
    Candidate,
    decode,
    hough_votes,
    input_to_output_px,
    output_to_input_px,
    pool_channels,
)

STRIDE = 2
OUT_SHAPE = (48, 40)  # output grid (h, w); the input slice is 96 x 80 pixels


def _blob_channel(
    keypoints_in: list[tuple[float, float]],
    amplitude: float = 0.9,
    sigma_out: float = 1.5,
    offset_radius_out: float = 4.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One label's (prob, offset_rows, offset_cols) for keypoints given in input pixels.

    Built like a training target: Gaussian probability around each keypoint's output-grid
    position, exact offsets to the nearest keypoint within ``offset_radius_out``.
    """
    rows, cols = np.mgrid[0 : OUT_SHAPE[0], 0 : OUT_SHAPE[1]].astype(float)
    prob = np.zeros(OUT_SHAPE)
    off_rows = np.zeros(OUT_SHAPE)
    off_cols = np.zeros(OUT_SHAPE)
    best_dist = np.full(OUT_SHAPE, np.inf)
    for row_in, col_in in keypoints_in:
        r_out, c_out = input_to_output_px(row_in, STRIDE), input_to_output_px(col_in, STRIDE)
        dist = np.hypot(rows - r_out, cols - c_out)
        prob = np.maximum(prob, amplitude * np.exp(-(dist**2) / (2 * sigma_out**2)))
        nearer = (dist < best_dist) & (dist <= offset_radius_out)
        off_rows[nearer] = r_out - rows[nearer]
        off_cols[nearer] = c_out - cols[nearer]
        best_dist = np.minimum(best_dist, dist)
    return prob, off_rows, off_cols


def _stack(channels: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    heatmap = np.stack([c[0] for c in channels])
    offset = np.stack([m for c in channels for m in (c[1], c[2])])
    return heatmap, offset


def test_output_and_input_pixel_maps_are_inverse_and_centre_output_pixels_on_input_pairs():
    assert output_to_input_px(0.0, 2) == pytest.approx(0.5)  # output pixel 0 covers input 0 and 1
    assert output_to_input_px(3.0, 2) == pytest.approx(6.5)
    values = np.array([-0.3, 0.0, 12.25, 47.9])
    np.testing.assert_allclose(output_to_input_px(input_to_output_px(values, 2), 2), values)


def test_network_votes_concentrate_on_the_point_the_offsets_agree_on():
    prob, off_rows, off_cols = _blob_channel([(41.3, 27.8)])
    votes = hough_votes(prob, off_rows, off_cols, min_prob=0.05)

    target_row, target_col = input_to_output_px(41.3, STRIDE), input_to_output_px(27.8, STRIDE)
    block = votes[int(target_row) : int(target_row) + 2, int(target_col) : int(target_col) + 2]
    voting_mass = prob[prob >= 0.05].sum()
    # All the probability of the voting pixels lands in the 2x2 block around the keypoint ...
    assert votes.sum() == pytest.approx(voting_mass)
    assert block.sum() == pytest.approx(voting_mass)
    # ... so the vote peak is far sharper than the heatmap peak it came from.
    assert votes.max() > 5 * prob.max()


def test_votes_pointing_outside_the_map_are_dropped_not_wrapped():
    prob = np.zeros((10, 10))
    prob[1, 1] = 0.8
    prob[5, 5] = 0.6
    off_rows = np.zeros((10, 10))
    off_cols = np.zeros((10, 10))
    off_rows[1, 1] = -3.0  # points above the top edge
    votes = hough_votes(prob, off_rows, off_cols)
    assert votes.sum() == pytest.approx(0.6)
    assert votes[5, 5] == pytest.approx(0.6)


def test_pixels_below_min_prob_cast_no_vote():
    prob = np.full((6, 6), 0.04)
    prob[3, 3] = 0.5
    votes = hough_votes(prob, np.zeros((6, 6)), np.zeros((6, 6)), min_prob=0.05)
    assert votes.sum() == pytest.approx(0.5)


def test_decoder_recovers_subpixel_keypoints_and_drops_channels_below_min_score():
    truth = {"L3": (40.3, 31.7), "L3-L4": (57.85, 34.2), "L4": (74.6, 36.45)}
    channels = [_blob_channel([truth[name]]) for name in truth]
    channels.append(_blob_channel([(20.0, 20.0)], amplitude=0.08))  # votes, but the net is unsure
    heatmap, offset = _stack(channels)

    candidates = decode(heatmap, offset, [*truth, "L2-L3"], stride=STRIDE, min_score=0.1)

    assert [c.label for c in candidates] == list(truth)  # faint L2-L3 dropped
    for c in candidates:
        row_in, col_in = truth[c.label]
        assert abs(c.row - row_in) < 0.25 and abs(c.col - col_in) < 0.25, c
        assert 0.8 < c.score <= 0.9  # heatmap probability at the peak


def test_decoder_stays_within_a_quarter_pixel_when_offsets_are_noisy():
    rng = np.random.default_rng(7)
    keypoint = (50.4, 30.9)
    prob, off_rows, off_cols = _blob_channel([keypoint])
    off_rows = off_rows + rng.normal(0, 0.2, off_rows.shape)
    off_cols = off_cols + rng.normal(0, 0.2, off_cols.shape)
    heatmap, offset = _stack([(prob, off_rows, off_cols)])

    (candidate,) = decode(heatmap, offset, ["L4"], stride=STRIDE)

    assert np.hypot(candidate.row - keypoint[0], candidate.col - keypoint[1]) < 0.25


def test_decoder_returns_several_candidates_per_label_strongest_first_and_caps_their_number():
    keypoints = [(20.2, 30.0), (60.6, 35.3), (80.1, 20.7), (40.0, 60.0)]
    amplitudes = [0.5, 0.95, 0.3, 0.7]
    prob = np.zeros(OUT_SHAPE)
    off_rows = np.zeros(OUT_SHAPE)
    off_cols = np.zeros(OUT_SHAPE)
    for keypoint, amplitude in zip(keypoints, amplitudes, strict=True):
        p, r, c = _blob_channel([keypoint], amplitude=amplitude)
        near = p > prob
        prob[near], off_rows[near], off_cols[near] = p[near], r[near], c[near]
    heatmap, offset = _stack([(prob, off_rows, off_cols)])

    candidates = decode(heatmap, offset, ["L5"], stride=STRIDE, max_per_label=3)

    assert len(candidates) == 3
    assert [round(c.row) for c in candidates] == [61, 40, 20]  # weakest (0.3) left out
    assert candidates[0] == Candidate("L5", pytest.approx(60.6), pytest.approx(35.3), pytest.approx(0.95, abs=0.05))


def test_two_peaks_closer_than_the_nms_radius_give_one_candidate():
    prob, off_rows, off_cols = _blob_channel([(40.0, 30.0)])
    # A second, weaker cluster of votes 1.5 input px away (a blurred double response).
    off_rows[prob < 0.5] += 0.75
    heatmap, offset = _stack([(prob, off_rows, off_cols)])

    candidates = decode(heatmap, offset, ["L1"], stride=STRIDE, nms_radius_px=4.0)

    assert len(candidates) == 1
    assert abs(candidates[0].row - 40.0) < 1.0


def test_a_peak_split_over_channels_too_weak_to_vote_is_found_in_their_pool():
    doubt = [_blob_channel([(40.3, 31.7)], amplitude=0.04) for _ in range(2)]  # each under min_prob 0.05
    other = _blob_channel([(70.0, 20.0)], amplitude=0.9)  # a sure peak elsewhere, in the pool too
    prob = np.stack([c[0] for c in (*doubt, other)])
    offset = np.stack([m for c in (*doubt, other) for m in c[1:]])
    assert [c.label for c in decode(prob, offset, ("L4-L5", "L5-S1", "L3-L4"), stride=STRIDE, min_score=0.05)] == [
        "L3-L4"
    ]

    pooled, pooled_offset = pool_channels(prob, offset, [[0, 1], [2]])
    found = decode(pooled, pooled_offset, ("disc?", "sure"), stride=STRIDE, min_score=0.05)

    assert [c.label for c in found] == ["disc?", "sure"]
    assert (found[0].row, found[0].col) == (pytest.approx(40.3, abs=0.05), pytest.approx(31.7, abs=0.05))
    assert found[0].score == pytest.approx(1 - 0.96**2, abs=0.005)  # noisy-OR of the two channels


def test_decoder_rejects_mismatched_shapes_with_a_clear_message():
    heatmap = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match="offset must be"):
        decode(heatmap, np.zeros((2, 8, 8)), ["L4", "L5"])
    with pytest.raises(ValueError, match="2 labels"):
        decode(np.zeros((3, 8, 8)), np.zeros((6, 8, 8)), ["L4", "L5"])
