"""Training cases and sagittal training samples: geometry of targets, visibility, loss masks."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_ivd.anatomy import structure
from napari_ivd.io import Volume, VolumeGeometry
from napari_ivd.preprocess import normalize_volume, resample_slice
from napari_ivd.training.cases import (
    LabelledCase,
    end_field_of_view,
    judged_cases,
    labels_of,
    link_sessions,
    load_lumbar_cases,
    merge_duplicates,
    split_cases,
    unseen_by_parent,
)
from napari_ivd.training.data import (
    AUGMENTATIONS,
    END_CLEARANCE_MM,
    ROBUST_AUGMENTATION,
    SampleConfig,
    SliceDataset,
    with_augmentation,
)

# --- a PSR phantom: Gaussian blobs at known keypoints, ellipsoid bodies in TSS values ---------
# File axes: i -> Posterior (0.7 mm), j -> Superior (0.9 mm), k -> Right (3 mm).
SHAPE = (48, 90, 9)
SPACING_AP, SPACING_SI, SPACING_LR = 0.7, 0.9, 3.0
OUT_SPACING_MM = 1.2
# name -> (mm below the top voxel centre, mm behind the front voxel centre, file k index)
PHANTOM_POINTS = {
    "L1": (18.3, 14.2, 4.0),
    "L1-L2": (29.1, 15.1, 4.0),
    "L2": (40.2, 16.3, 4.0),
    "L2-L3": (51.4, 17.0, 0.0),  # annotated 12 mm off the mid-sagittal slab: never visible
    "L3": (62.5, 18.4, 4.0),
}
BODY_SEMI_AXES_MM = (6.0, 8.0, 12.0)  # S-I, A-P, L-R
BLOB_SIGMA_MM = 2.5


def _phantom_case() -> LabelledCase:
    affine = np.array(
        [
            [0.0, 0.0, SPACING_LR, -30.0],
            [-SPACING_AP, 0.0, 0.0, 10.0],
            [0.0, SPACING_SI, 0.0, 20.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert nib.aff2axcodes(affine) == ("P", "S", "R")
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    ap_mm, si_mm, lr_mm = i * SPACING_AP, (SHAPE[1] - 1 - j) * SPACING_SI, k * SPACING_LR
    image = np.zeros(SHAPE)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    keypoints_vox = {}
    for name, (si0, ap0, k0) in PHANTOM_POINTS.items():
        s = structure(name)
        height = 1.0 if s.is_vertebra else 0.7
        d2 = (si_mm - si0) ** 2 + (ap_mm - ap0) ** 2
        image += height * np.exp(-d2 / (2 * BLOB_SIGMA_MM**2)) * np.exp(-((lr_mm - 4 * SPACING_LR) ** 2) / 128.0)
        keypoints_vox[name] = np.array([ap0 / SPACING_AP, SHAPE[1] - 1 - si0 / SPACING_SI, k0])
        if s.is_vertebra:
            a_si, a_ap, a_lr = BODY_SEMI_AXES_MM
            inside = ((si_mm - si0) / a_si) ** 2 + ((ap_mm - ap0) / a_ap) ** 2 + ((lr_mm - k0 * SPACING_LR) / a_lr) ** 2
            mask[inside <= 1] = s.tss_value
    volume = Volume((1000 * image).astype(np.float32), VolumeGeometry(affine, SHAPE), Path("phantom.nii.gz"))
    return LabelledCase("phantom/psr", "T2w", volume, keypoints_vox, mask, frozenset({"vertebra"}))


@pytest.fixture(scope="module")
def phantom() -> LabelledCase:
    return _phantom_case()


def _expected_px(name: str, origin_px: np.ndarray) -> np.ndarray:
    """Keypoint in input pixels computed from mm, independently of SagittalView."""
    si_mm, ap_mm, _ = PHANTOM_POINTS[name]
    return np.array([si_mm, ap_mm]) / OUT_SPACING_MM - origin_px


def _to_output_px(points_px: np.ndarray) -> np.ndarray:
    return (np.asarray(points_px) + 0.5) / 2 - 0.5  # output pixel y is centred on input 2y + 0.5


def _blob_centre_px(image: np.ndarray, near_px: np.ndarray, radius_px: int = 3) -> np.ndarray:
    r0, c0 = np.round(near_px).astype(int)
    window = image[r0 - radius_px : r0 + radius_px + 1, c0 - radius_px : c0 + radius_px + 1]
    assert window.shape == (2 * radius_px + 1,) * 2, "blob too close to the crop edge for this check"
    weights = window - window.min()
    rows, cols = np.mgrid[-radius_px : radius_px + 1, -radius_px : radius_px + 1]
    return np.array([r0 + (weights * rows).sum() / weights.sum(), c0 + (weights * cols).sum() / weights.sum()])


def _phantom_sample(case: LabelledCase, index: int = 0, **cfg_overrides) -> tuple[SampleConfig, dict]:
    defaults = {"spacing_mm": OUT_SPACING_MM, "crop": (64, 32), "augment": False, "lateral_fraction": 0.0}
    cfg = SampleConfig(**{**defaults, **cfg_overrides})
    dataset = SliceDataset([case], cfg, samples_per_epoch=8, seed=3)
    return cfg, {k: v.numpy() for k, v in dataset[index].items()}


def test_resampled_slice_puts_pixel_centres_at_index_times_spacing():
    rows_vox, cols_vox = np.mgrid[0:40, 0:30].astype(np.float64)
    ramp = 2.0 * rows_vox * 0.9 + 3.0 * cols_vox * 0.7  # a linear function of position in mm
    out = resample_slice(ramp, (0.9, 0.7), 1.2)
    assert out.shape == (int(39 * 0.9 / 1.2) + 1, int(29 * 0.7 / 1.2) + 1) == (30, 17)
    r_px, c_px = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
    np.testing.assert_allclose(out, 2.0 * r_px * 1.2 + 3.0 * c_px * 1.2, atol=1e-3)


def test_normalized_volume_spans_zero_to_one_and_constant_scan_is_safe():
    rng = np.random.default_rng(0)
    scan = rng.normal(300.0, 50.0, size=(20, 20, 20))
    scan[0, 0, 0] = 1e6  # one hot voxel must not squash the contrast
    out = normalize_volume(scan)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < float(np.median(out)) < 0.6
    assert not normalize_volume(np.full((4, 4, 4), 7, dtype=np.int16)).any()


def test_heatmap_peak_and_offsets_land_on_projected_keypoint_in_psr_phantom(phantom):
    cfg, sample = _phantom_sample(phantom)
    origin_px = sample["origin_px"]
    assert sample["image"].shape == (1, 64, 32) and sample["heatmap"].shape == (cfg.n_labels, 32, 16)
    slice_col_px = np.arange(32) + origin_px[1]  # the resampled slice is 28 pixels wide
    assert np.any(slice_col_px < 0) or np.any(slice_col_px > 27)
    assert not sample["image"][0][:, (slice_col_px < 0) | (slice_col_px > 27)].any(), "padding must be zeros"
    for name in ("L1", "L1-L2", "L2", "L3"):
        k = cfg.labels.index(name)
        expected_px = _expected_px(name, origin_px)
        assert sample["visible"][k] == 1.0
        np.testing.assert_allclose(sample["keypoints"][k], expected_px, atol=1e-3)
        peak_out = np.array(np.unravel_index(np.argmax(sample["heatmap"][k]), sample["heatmap"][k].shape))
        assert np.all(np.abs(peak_out - _to_output_px(expected_px)) <= 0.5 + 1e-4), name
        assert sample["heatmap"][k].max() > 0.9
        y, x = peak_out
        pointed_at = peak_out + sample["offset"][2 * k : 2 * k + 2, y, x]
        assert sample["offset_mask"][k, y, x] == 1.0
        np.testing.assert_allclose(pointed_at, _to_output_px(expected_px), atol=1e-4)
        # the image itself shows the blob where the target says
        np.testing.assert_allclose(_blob_centre_px(sample["image"][0], expected_px), expected_px, atol=0.5)


def test_visibility_needs_annotation_crop_and_slab(phantom):
    cfg, sample = _phantom_sample(phantom)
    visible = dict(zip(cfg.labels, sample["visible"], strict=True))
    assert {n for n, v in visible.items() if v} == {"L1", "L1-L2", "L2", "L3"}  # L2-L3 is 12 mm lateral
    assert np.isnan(sample["keypoints"][cfg.labels.index("L2-L3")]).all()
    hidden = [k for k, v in enumerate(sample["visible"]) if not v]
    assert not sample["heatmap"][hidden].any() and not sample["offset_mask"][hidden].any()

    cfg, small = _phantom_sample(phantom, crop=(32, 32))
    outside = 0
    for name in ("L1", "L1-L2", "L2", "L3"):
        k = cfg.labels.index(name)
        expected_px = _expected_px(name, small["origin_px"])
        in_crop = bool(np.all((expected_px >= 0) & (expected_px <= 31)))
        outside += not in_crop
        assert small["visible"][k] == float(in_crop), name
        assert np.isnan(small["keypoints"][k]).all() != in_crop
    assert outside >= 1, "a 38 mm crop cannot hold a 44 mm spine"


def test_seg_valid_holds_the_annotated_bodies_and_the_background_between_them_only(phantom):
    cfg, sample = _phantom_sample(phantom)
    seg, seg_valid = sample["seg"], sample["seg_valid"]
    assert not seg_valid[1].any() and not seg[1].any(), "the phantom annotates no disc masks"
    row_mm = (np.arange(64) + sample["origin_px"][0]) * OUT_SPACING_MM
    tilt_mm = 4.0  # the spine leans 5 degrees forward: planes across it cross a row over 4 mm of the crop
    # between the centres of L1 and L3, short of the clearance at either end: known background
    between = (row_mm > PHANTOM_POINTS["L1"][0] + END_CLEARANCE_MM + tilt_mm) & (
        row_mm < PHANTOM_POINTS["L3"][0] - END_CLEARANCE_MM - tilt_mm
    )
    # towards T12 and L4, which may lie there unannotated: only the end bodies' own pixels
    ends = (row_mm < PHANTOM_POINTS["L1"][0] + END_CLEARANCE_MM - tilt_mm) | (
        row_mm > PHANTOM_POINTS["L3"][0] - END_CLEARANCE_MM + tilt_mm
    )
    assert between.any() and ends.any() and seg[0][ends].any()
    assert np.all(seg_valid[0][between] == 1)
    assert np.array_equal(seg_valid[0][ends], seg[0][ends])
    for name in ("L1", "L2", "L3"):
        r, c = np.round(sample["keypoints"][cfg.labels.index(name)]).astype(int)
        assert seg[0, r, c] == 1.0
    disc_row = round(float(sample["keypoints"][cfg.labels.index("L1-L2")][0]))
    assert not seg[0, disc_row, :].any(), "the gap between bodies is no body"


def test_augmented_samples_keep_heatmap_keypoint_and_image_in_register(phantom):
    cfg = SampleConfig(spacing_mm=OUT_SPACING_MM, crop=(64, 32), augment=True, noise_std_range=(0.0, 0.0))
    dataset = SliceDataset([phantom], cfg, samples_per_epoch=6, seed=11)
    l1, l2 = cfg.labels.index("L1"), cfg.labels.index("L2")
    distances_px = []
    checked = 0
    for index in range(len(dataset)):
        sample = {k: v.numpy() for k, v in dataset[index].items()}
        keypoints_px = sample["keypoints"]
        for k in np.flatnonzero(sample["visible"]):
            peak_out = np.array(np.unravel_index(np.argmax(sample["heatmap"][k]), sample["heatmap"][k].shape))
            assert np.all(np.abs(peak_out - _to_output_px(keypoints_px[k])) <= 0.5 + 1e-4)
            if np.all((keypoints_px[k] >= 4) & (keypoints_px[k] <= np.array(cfg.crop) - 5)):
                centre_px = _blob_centre_px(sample["image"][0], keypoints_px[k])
                np.testing.assert_allclose(centre_px, keypoints_px[k], atol=0.75)
                checked += 1
        if sample["visible"][l1] and sample["visible"][l2]:
            distances_px.append(float(np.linalg.norm(keypoints_px[l1] - keypoints_px[l2])))
    assert checked >= 6
    assert np.ptp(distances_px) > 0.5, "scale augmentation should change the L1-L2 distance"


def test_dataset_is_deterministic_per_seed_and_index(phantom):
    cfg = SampleConfig(spacing_mm=OUT_SPACING_MM, crop=(64, 32))
    a = SliceDataset([phantom], cfg, samples_per_epoch=4, seed=5)[2]
    b = SliceDataset([phantom], cfg, samples_per_epoch=4, seed=5)[2]
    c = SliceDataset([phantom], cfg, samples_per_epoch=4, seed=6)[2]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy(), equal_nan=True) for k in a)
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())


def test_sample_config_round_trips_through_json():
    cfg = SampleConfig(labels=("l4", "L4/L5", "L5"), crop=(128, 96), augment=False)
    restored = SampleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg and restored.labels == ("L4", "L4-L5", "L5")
    with pytest.raises(ValueError, match="unknown SampleConfig keys"):
        SampleConfig.from_dict({**cfg.to_dict(), "sigma": 3})
    with pytest.raises(ValueError, match="multiples of 8"):
        SampleConfig(crop=(100, 96))


def test_an_ended_field_of_view_blanks_the_scan_and_the_reference_below_the_plane(phantom):
    """``end_field_of_view``: the scan stops half an L1→L2 spacing below L2; what lies lower is gone."""
    ended = end_field_of_view(phantom, "L2", fraction=0.5)
    plane_mm = PHANTOM_POINTS["L2"][0] + 0.5 * (PHANTOM_POINTS["L2"][0] - PHANTOM_POINTS["L1"][0])
    assert (
        set(ended.keypoints_vox) == {n for n, p in PHANTOM_POINTS.items() if p[0] < plane_mm} == {"L1", "L1-L2", "L2"}
    )
    view = phantom.volume.view
    before, after = view.to_display(phantom.volume.array), view.to_display(ended.volume.array)
    row = np.arange(before.shape[1]) * SPACING_SI  # display rows run caudally from the top voxel
    kept, cut = row < plane_mm - SPACING_SI, row > plane_mm + SPACING_SI
    assert np.array_equal(after[:, kept], before[:, kept]) and before[:, cut].max() > 0
    assert np.all(after[:, cut] == phantom.volume.array.min())
    mask_after = view.to_display(ended.mask_tss)
    assert not mask_after[:, cut].any() and np.array_equal(
        mask_after[:, kept], view.to_display(phantom.mask_tss)[:, kept]
    )
    assert phantom.keypoints_vox.keys() == PHANTOM_POINTS.keys()  # the original case is untouched
    l3_plane_mm = PHANTOM_POINTS["L3"][0] + 0.5 * (PHANTOM_POINTS["L3"][0] - PHANTOM_POINTS["L2"][0])  # L2: nearest
    below_l3 = view.to_display(end_field_of_view(phantom, "L3").volume.array)[:, row > l3_plane_mm + SPACING_SI]
    assert below_l3.size and np.all(below_l3 == phantom.volume.array.min())
    assert end_field_of_view(phantom, "L5") is None and end_field_of_view(phantom, "L1") is None


# --- the real lumbar data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lumbar_cases(shared_data) -> dict[str, LabelledCase]:
    return {c.name: c for c in load_lumbar_cases(shared_data / "lumbar")}


def test_lumbar_loader_finds_every_case_with_manifest_contrasts(lumbar_cases):
    assert len(lumbar_cases) == 58  # 62 case folders, 4 of them a copy of another's image
    by_set = Counter((name.split("/")[0], c.contrast) for name, c in lumbar_cases.items())
    assert by_set == {("IVD", "T2w"): 2, ("VB1", "T1w"): 6, ("VB2", "T2w"): 7, ("VB3", "water"): 43}


def test_vb3_scans_shipped_twice_are_one_case_and_a_copy_of_a_training_case_is_not_unseen(lumbar_cases):
    copies = {name: c.duplicates for name, c in lumbar_cases.items() if c.duplicates}
    assert copies == {
        "VB3/case-18": ("VB3/case-19",),
        "VB3/case-32": ("VB3/case-33",),
        "VB3/case-51": ("VB3/case-53",),
        "VB3/case-52": ("VB3/case-54",),
    }
    cases = list(lumbar_cases.values())
    unseen = {c.name for c in judged_cases(cases, {"trained_on": ["VB3/case-19"]}, unseen=True, sources=["VB3"])}
    assert "VB3/case-18" not in unseen and len(unseen) == 42


def test_two_series_of_one_exam_are_split_and_judged_together(lumbar_cases):
    linked = {name: c.same_session for name, c in lumbar_cases.items() if c.same_session}
    assert linked == {"VB1/case-10": ("VB1/case-11",), "VB1/case-11": ("VB1/case-10",)}  # DzZ_T1, DzZ_T2
    cases = list(lumbar_cases.values())
    for seed in range(8):
        dev = {c.name for c in split_cases(cases, seed=seed)[1]}
        assert ("VB1/case-10" in dev) == ("VB1/case-11" in dev), seed
    unseen = {c.name for c in judged_cases(cases, {"trained_on": ["VB1/case-11"]}, unseen=True, sources=["VB1"])}
    assert unseen == {"VB1/case-02", "VB1/case-15", "VB1/case-16", "VB1/case-17"}


def test_one_session_needs_the_same_grid_and_the_common_levels_within_a_voxel(phantom):
    other_series = replace(phantom, name="phantom/t1", volume=replace(phantom.volume, array=-phantom.volume.array))
    moved = replace(
        other_series,
        name="phantom/moved",
        keypoints_vox={n: p + np.array([0, 1.5, 0]) for n, p in phantom.keypoints_vox.items()},
    )
    elsewhere = replace(phantom, name="other/psr")  # another set: another source, not one exam
    linked = {c.name: c.same_session for c in link_sessions([phantom, other_series, moved, elsewhere])}
    assert linked == {
        "phantom/psr": ("phantom/t1",),
        "phantom/t1": ("phantom/psr",),
        "phantom/moved": (),
        "other/psr": (),
    }


def test_merging_keeps_the_first_case_of_an_image_and_its_labels(phantom, caplog):
    other_image = replace(phantom, name="VB3/case-02", volume=replace(phantom.volume, array=phantom.volume.array + 1))
    copy = replace(phantom, name="VB3/case-09", keypoints_vox={})
    with caplog.at_level("WARNING"):
        merged = merge_duplicates([phantom, other_image, copy])
    assert "VB3/case-09 has the image of phantom/psr" in caplog.text and "with other labels" in caplog.text
    assert [c.name for c in merged] == [phantom.name, "VB3/case-02"]
    assert merged[0].duplicates == ("VB3/case-09",) and merged[1].duplicates == ()
    assert merged[0].keypoints_vox.keys() == phantom.keypoints_vox.keys()
    assert merged[0].seen_in(["VB3/case-09"]) and not merged[1].seen_in(["VB3/case-09"])


def test_vb2_case07_has_named_bodies_and_derived_discs_between_neighbours(lumbar_cases, shared_data):
    case = lumbar_cases["VB2/case-07"]
    vertebrae = ["T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    discs = ["T11-T12", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5"]
    assert set(vertebrae + discs) <= set(case.keypoints_vox)
    assert case.mask_kinds == frozenset({"vertebra"})
    info = json.loads((shared_data / "lumbar/VB2/case-07/info.json").read_text())
    for name, centroid_vox in info["vb_centroids_vox"].items():
        np.testing.assert_allclose(case.keypoints_vox[name], centroid_vox, atol=0.01)
    row = {n: case.volume.view.vox_to_display(p)[0, 1] for n, p in case.keypoints_vox.items()}  # S-I display row
    for disc in discs:
        s = structure(disc)
        assert row[s.upper] < row[disc] < row[s.lower], disc


def test_ivd_case11_has_expert_disc_points_inside_its_disc_mask(lumbar_cases):
    case = lumbar_cases["IVD/case-11"]
    discs = ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    assert sorted(case.keypoints_vox, key=lambda n: structure(n).order) == discs
    assert case.mask_tss is not None and case.mask_kinds == frozenset({"disc"})
    for name in discs:
        i, j, k = np.round(case.keypoints_vox[name]).astype(int)
        assert case.mask_tss[i, j, k] == structure(name).tss_value, name


def test_vb1_t1w_cases_name_their_levels_down_to_the_sacrum(lumbar_cases):
    vb1 = {name: c for name, c in lumbar_cases.items() if name.startswith("VB1/")}
    assert len(vb1) == 6 and all(c.contrast == "T1w" for c in vb1.values())
    for name, case in vb1.items():
        assert {"L1", "L5", "S1", "L4-L5", "L5-S1"} <= set(case.keypoints_vox), name
        assert case.mask_kinds == frozenset({"vertebra"}) and case.mask_kind_only is None
        # the sacrum (TotalSpineSeg 50) lies below L5, and the L5-S1 disc between them
        row = {n: case.volume.view.vox_to_display(p)[0, 1] for n, p in case.keypoints_vox.items()}
        assert row["L5"] < row["L5-S1"] < row["S1"], name


def test_split_is_deterministic_stratified_and_order_independent(lumbar_cases):
    cases = list(lumbar_cases.values())
    train, dev = split_cases(cases, dev_fraction=0.2, seed=0)
    train_again, dev_again = split_cases(cases[::-1], dev_fraction=0.2, seed=0)
    assert {c.name for c in dev} == {c.name for c in dev_again}
    assert {c.name for c in train} == {c.name for c in train_again}
    assert {c.name for c in train} | {c.name for c in dev} == set(lumbar_cases)
    assert not {c.name for c in train} & {c.name for c in dev}
    dev_contrasts = Counter(c.contrast for c in dev)
    # 20 % of 5 T1w sessions (the one drawn is DzZ's exam: two series), of 9 T2w and of 43 water scans
    assert dev_contrasts == {"T1w": 2, "T2w": 2, "water": 9}
    other_seed = {c.name for c in split_cases(cases, dev_fraction=0.2, seed=1)[1]}
    assert other_seed != {c.name for c in dev}


def test_a_model_is_judged_only_on_cases_it_did_not_train_on(lumbar_cases):
    cases = list(lumbar_cases.values())
    dev = {c.name for c in split_cases(cases, seed=0)[1]}
    trained = sorted(set(lumbar_cases) - dev)

    assert {c.name for c in judged_cases(cases, {"trained_on": trained})} == dev
    assert {c.name for c in judged_cases(cases, {"trained_on": trained[:5]}, unseen=True)} == set(trained[5:]) | dev
    vb1 = judged_cases(cases, {"trained_on": trained}, unseen=True, sources=["VB1"])
    assert [c.name for c in vb1] == sorted(dev & {n for n in lumbar_cases if n.startswith("VB1/")})
    with pytest.raises(ValueError, match=r"trained on dev cases \['IVD/case-11'\].*never saw"):
        judged_cases(cases, {"trained_on": [*trained, "IVD/case-11"]})


def test_dev_cases_a_parent_trained_on_train_its_child_instead_of_judging_it(lumbar_cases):
    cases = list(lumbar_cases.values())
    train, dev = split_cases(cases, seed=0)
    parent_saw = ["VB1/case-11", dev[0].name]  # VB1/case-11's other series, case-10, goes with it
    child_train, child_dev = unseen_by_parent(train, dev, parent_saw)
    moved = {c.name for c in dev} - {c.name for c in child_dev}
    assert moved == {dev[0].name, "VB1/case-10", "VB1/case-11"} & {c.name for c in dev}
    assert "VB1/case-10" in moved and dev[0].name in moved
    assert [c.name for c in child_train] == [c.name for c in train] + [c.name for c in dev if c.name in moved]
    assert unseen_by_parent(train, dev, []) == (train, dev)


def test_disc_only_case_never_teaches_vertebrae_as_background(lumbar_cases):
    case = lumbar_cases["IVD/case-11"]
    cfg = SampleConfig()
    dataset = SliceDataset([case], cfg, samples_per_epoch=3, seed=0)
    for index in range(len(dataset)):
        sample = {k: v.numpy() for k, v in dataset[index].items()}
        assert not sample["seg_valid"][0].any() and not sample["seg"][0].any()
        assert sample["seg_valid"][1].any()
        visible = {cfg.labels[k] for k in np.flatnonzero(sample["visible"])}
        assert visible and visible <= {"L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"}
        for k in np.flatnonzero(sample["visible"]):
            r, c = np.round(sample["keypoints"][k]).astype(int)
            assert sample["seg"][1, r - 1 : r + 2, c - 1 : c + 2].any(), cfg.labels[k]


def test_far_lateral_slices_teach_absent_keypoints_but_keep_masks(phantom):
    cfg = SampleConfig(spacing_mm=OUT_SPACING_MM, crop=(64, 32), augment=False, negative_lr_mm=3.5)
    dataset = SliceDataset([phantom], cfg, samples_per_epoch=1, seed=0)
    mid_slice = round(np.mean([p[0] for p in dataset._cases[0].keypoints_display if np.isfinite(p[0])]))
    far_slice = int(dataset._cases[0].lateral_slices.max())
    assert abs(far_slice - mid_slice) * dataset._cases[0].spacing_mm[0] > cfg.negative_lr_mm
    near = {k: v.numpy() for k, v in dataset.sample(0, mid_slice, np.random.default_rng(0)).items()}
    far = {k: v.numpy() for k, v in dataset.sample(0, far_slice, np.random.default_rng(0)).items()}
    k = cfg.labels.index("L2")
    assert near["visible"][k] == 1.0 and near["heatmap"][k].max() > 0.9
    assert far["visible"][k] == 1.0 and far["heatmap"][k].max() == 0.0  # taught: not on this slice
    assert far["seg_valid"][0].any()  # the vertebral-body mask is still learnt out there


def test_site_augmentation_changes_intensities_only_and_inverts_when_asked(phantom):
    plain = dict(spacing_mm=OUT_SPACING_MM, crop=(64, 32), gamma_range=(1.0, 1.0), contrast_range=(1.0, 1.0))
    plain |= dict(brightness_range=(0.0, 0.0), noise_std_range=(0.0, 0.0))
    off = SliceDataset([phantom], SampleConfig(**plain), samples_per_epoch=3, seed=3)
    inverted = SliceDataset([phantom], SampleConfig(**plain, invert_probability=1.0), samples_per_epoch=3, seed=3)
    robust = SliceDataset([phantom], SampleConfig(**plain, **ROBUST_AUGMENTATION), samples_per_epoch=3, seed=3)
    for index in range(3):
        a, b, c = ({k: v.numpy() for k, v in d[index].items()} for d in (off, inverted, robust))
        for key in ("heatmap", "visible", "offset", "seg", "seg_valid"):  # geometry and targets untouched
            assert np.array_equal(a[key], b[key]) and np.array_equal(a[key], c[key]), key
        inside = a["image"] > 0
        np.testing.assert_allclose(b["image"][inside], 1.0 - a["image"][inside], atol=1e-6)
        assert not np.array_equal(a["image"], c["image"])
        assert c["image"].min() >= 0.0 and c["image"].max() <= 1.0
    with pytest.raises(ValueError, match="probability"):
        SampleConfig(invert_probability=1.5)


def test_a_recipe_replaces_a_parents_augmentation_and_keeps_the_rest():
    """Fine-tuning with ``--augmentation``: the recipe asked for, on the parent's labels and geometry."""
    parent = SampleConfig(labels=("L4", "L4-L5", "L5"), crop=(128, 96), **AUGMENTATIONS["robust-fov"])
    plain = with_augmentation(parent, "default")
    assert (plain.labels, plain.crop) == (parent.labels, parent.crop)
    assert plain.remap_probability == plain.fov_cut_probability == plain.blur_sigma_max_px == 0.0
    robust = with_augmentation(plain, "robust")
    assert {name: getattr(robust, name) for name in ROBUST_AUGMENTATION} == ROBUST_AUGMENTATION
    assert robust.fov_cut_probability == 0.0 and robust.labels == parent.labels
    with pytest.raises(KeyError):
        with_augmentation(parent, "strong")


def test_a_shortened_field_of_view_ends_above_the_sacrum_and_leaves_what_it_cut_unknown(lumbar_cases):
    """``fov_cut_probability``: the image stops in the spine's lower half; the cut levels are unknown, not absent."""
    case = lumbar_cases["VB1/case-15"]  # annotates T10 … S1
    labels = labels_of([case])
    cfg = SampleConfig(labels=labels, fov_cut_probability=1.0)
    dataset = SliceDataset([case], cfg, samples_per_epoch=1, seed=0)
    prepared = dataset._cases[0]
    mid_slice = round(float(np.median(prepared.keypoints_display[prepared.annotated, 0])))
    s1, t12 = labels.index("S1"), labels.index("T12")
    for seed in range(4):
        d = {k: v.numpy() for k, v in dataset.sample(0, mid_slice, np.random.default_rng(seed)).items()}
        blank = np.all(d["image"] == 0, axis=(0, 2))
        cut_row = int(np.flatnonzero(~blank)[-1]) + 1  # the image ends here
        assert cut_row < cfg.crop[0]
        assert np.all(d["seg"][:, cut_row:] == 0) and np.all(d["seg_valid"][:, cut_row:] == 1)
        rows = d["keypoints"][:, 0]
        named = np.isfinite(rows)
        assert np.all(rows[named] < cut_row)  # nothing is taught where the image is blank
        assert d["visible"][s1] == 0 and d["heatmap"][s1].max() == 0  # cut off: unknown, never "absent"
        assert named.sum() >= prepared.annotated.sum() // 2  # the upper half of the spine stays to name from
        assert d["visible"][t12] == 1 and d["heatmap"][t12].max() > 0.9
    uncut = {
        k: v.numpy()
        for k, v in SliceDataset([case], SampleConfig(labels=labels), 1, seed=0)
        .sample(0, mid_slice, np.random.default_rng(0))
        .items()
    }
    assert uncut["visible"][s1] == 1  # S1 is in the crop unless the field of view is cut
    with pytest.raises(ValueError, match="probability"):
        SampleConfig(fov_cut_probability=-0.1)
