"""Unknown is not absent: a level a case does not annotate never teaches a model anything.

Per case and per label, heatmaps and offsets are trained only where the case annotates the
label (``visible``), masks only where the case's annotation says what is there
(``seg_valid``): on its annotated structures and between neighbouring annotated levels, never
beyond the last annotated level towards one it does not annotate (S1 below L5 on VB2/VB3, the
level above the top one), nor on a level skipped in between. Checked on phantoms whose
unannotated levels are there to be mistaken for background, on real cases (S1 hidden on a
VB1 case, where its true place is known; a VB3 case, which labels no S1), and through every
architecture's own loss (heatmap, offset and mask outputs alike).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from _arch_contract import TINY, blob_batch, seeded_single_thread  # noqa: F401 (autouse fixture)
from napari_ivd.anatomy import structure
from napari_ivd.models import build, registry
from napari_ivd.store import AnnotationStore
from napari_ivd.training.cases import LabelledCase, load_lumbar_case
from napari_ivd.training.data import SampleConfig, SliceDataset
from napari_ivd.training.store_cases import labelled_case, plan_training
from phantom_support import PHANTOM_CFG, phantom_case


def _taught_as_background(
    case: LabelledCase, tracer: LabelledCase, cfg: SampleConfig, slices: Sequence[int], draws: int = 3
) -> tuple[int, int]:
    """(pixels of bodies the case does not annotate, those of them its masks' loss covers), over samples."""
    ours, theirs = SliceDataset([case], cfg, samples_per_epoch=1), SliceDataset([tracer], cfg, samples_per_epoch=1)
    seen = taught = 0
    for slice_index in slices:
        for draw in range(draws):
            a = ours.sample(0, slice_index, np.random.default_rng(draw))
            b = theirs.sample(0, slice_index, np.random.default_rng(draw))
            unannotated = (b["seg"][0] > 0) & (a["seg"][0] == 0)
            seen += int(unannotated.sum())
            taught += int((unannotated & (a["seg_valid"][0] > 0)).sum())
    return seen, taught


@pytest.mark.parametrize(
    ("levels", "annotated", "unnamed"),
    [
        (("T12", "L1", "L2", "L3", "L4"), {"L1", "L2", "L3"}, False),  # the level above and below unknown
        (("T12", "L1", "L2", "L3", "L4"), {"L1", "L3", "L4"}, False),  # L2 skipped in between
        (("L2", "L3", "L4", "L5", "S1"), {"L2", "L3", "L4", "L5"}, False),  # S1 below L5, as on VB2/VB3
        (("T12", "L1", "L2", "L3", "L4"), {"L1", "L2", "L3"}, True),  # bodies whose levels nobody named
    ],
    ids=["both-ends", "a-gap", "no-S1", "unnamed-bodies"],
)
def test_an_unannotated_body_is_never_taught_as_mask_background(levels, annotated, unnamed):
    case, tracer = phantom_case(levels, annotated, unnamed)
    seen, taught = _taught_as_background(case, tracer, PHANTOM_CFG, slices=range(2, 13, 2))
    assert seen > 1000, "the unannotated bodies must lie in the samples for this to test anything"
    assert taught == 0


def test_between_annotated_neighbours_and_beyond_s1_the_background_is_known():
    case, _ = phantom_case(("L2", "L3", "L4", "L5", "S1"), {"L3", "L4", "L5", "S1"})
    sample = SliceDataset([case], PHANTOM_CFG, samples_per_epoch=1).sample(0, 7, np.random.default_rng(0))
    seg, valid = sample["seg"][0].numpy(), sample["seg_valid"][0].numpy()
    background_known = (valid > 0) & (seg == 0)
    keypoints = sample["keypoints"].numpy()
    row = {name: keypoints[PHANTOM_CFG.labels.index(name)][0] for name in ("L3", "L4", "L5")}
    assert background_known[round((row["L3"] + row["L4"]) / 2)].any(), "the disc between L3 and L4"
    assert background_known[round(row["L5"]) + 30 :].any(), "below S1 nothing of its kind lies: known"
    assert not background_known[: round(row["L3"]) - 10].any(), "above L3 lies L2, not annotated"


def test_a_store_case_fine_tuned_on_teaches_neither_its_unannotated_levels_nor_their_bodies():
    """Fine-tuning reads a store revision (:func:`labelled_case`); the same rules hold for it."""
    case, tracer = phantom_case(("T12", "L1", "L2", "L3", "L4"), {"L1", "L2", "L3"})
    store = AnnotationStore.open(f"memory://unknown-{np.random.default_rng().integers(1 << 30)}", create=True)
    store.add_case(case.volume, "partial")
    store.save_revision("partial", [], case.mask_tss)  # a mask of L1-L3 only, no point
    [planned] = plan_training(store).train
    learnt = labelled_case(store, planned)
    assert sorted(learnt.keypoints_vox, key=lambda n: structure(n).order) == ["L1", "L2", "L3"]
    tracer = dataclasses.replace(tracer, volume=learnt.volume, keypoints_vox=learnt.keypoints_vox)
    seen, taught = _taught_as_background(learnt, tracer, PHANTOM_CFG, slices=(3, 7, 11))
    assert seen > 1000 and taught == 0
    dataset = SliceDataset([learnt], PHANTOM_CFG, samples_per_epoch=4)
    for index in range(len(dataset)):
        visible = {PHANTOM_CFG.labels[k] for k in np.flatnonzero(dataset[index]["visible"].numpy())}
        assert visible <= {"L1", "L2", "L3"}


# --- real cases -----------------------------------------------------------------------------------


def test_s1_hidden_on_a_real_vb1_case_is_never_taught_as_background(shared_data):
    """VB1/case-15 labels S1; hidden, it stands for VB2/VB3, which show it and do not label it.

    Its sacrum reaches furthest towards L5 of the VB1 cases (0.7 mm short of L5's centre plane).
    """
    full = load_lumbar_case(shared_data / "lumbar" / "VB1/case-15")
    points = {n: p for n, p in full.keypoints_vox.items() if n not in ("S1", "L5-S1")}
    hidden = np.where(full.mask_tss == structure("S1").tss_value, 0, full.mask_tss)
    case = dataclasses.replace(full, keypoints_vox=points, mask_tss=hidden)
    tracer = dataclasses.replace(full, keypoints_vox=points)
    mid = round(float(np.mean([case.volume.view.vox_to_display(p)[0, 0] for p in points.values()])))
    seen, taught = _taught_as_background(case, tracer, SampleConfig(), slices=(mid - 8, mid, mid + 6), draws=2)
    assert seen > 1000 and taught == 0


def test_a_real_vb3_case_never_teaches_where_its_s1_lies_as_background(shared_data):
    """VB3 labels L1-L5 only; S1 is taken to lie one level step below L5 (L5's voxels moved by L4 -> L5)."""
    case = load_lumbar_case(shared_data / "lumbar" / "VB3/case-01")
    l4, l5 = (np.argwhere(case.mask_tss == structure(n).tss_value) for n in ("L4", "L5"))
    step = np.round(l5.mean(axis=0) - l4.mean(axis=0)).astype(int)
    s1 = l5 + step
    s1 = s1[np.all((s1 >= 0) & (s1 < case.mask_tss.shape), axis=1)]
    traced = case.mask_tss.copy()
    free = traced[tuple(s1.T)] == 0
    traced[tuple(s1[free].T)] = structure("S1").tss_value
    tracer = dataclasses.replace(case, mask_tss=traced)
    mid = round(float(np.mean([case.volume.view.vox_to_display(p)[0, 0] for p in case.keypoints_vox.values()])))
    seen, taught = _taught_as_background(case, tracer, SampleConfig(), slices=(mid - 6, mid, mid + 6), draws=2)
    assert seen > 1000 and taught == 0


# --- every architecture's loss ---------------------------------------------------------------------


def _partly_annotated_batch() -> dict[str, torch.Tensor]:
    """Sample 0 does not annotate label 1; its vertebra mask is unknown below row 40 and its disc mask nowhere."""
    batch = blob_batch(n=2, size=64, k=2)
    batch["visible"][0, 1] = 0.0
    for key in ("heatmap", "offset_mask"):
        batch[key][0, 1] = 0.0
    batch["offset"][0, 2:4] = 0.0
    batch["keypoints"][0, 1] = float("nan")
    batch["seg_valid"][0, 0, 40:] = 0.0
    batch["seg_valid"][0, 1] = 0.0
    return batch


def _unknown(name: str, value: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Where output ``name`` says something the batch does not annotate: True there, False elsewhere."""
    unknown_label = batch["visible"] == 0  # (B, K)
    seg_unknown = batch["seg_valid"] == 0  # (B, 2, H, W)
    if name in ("heatmap", "heatmap_values"):
        return unknown_label[:, :, None, None].expand_as(value)
    if name == "aux_heatmaps":  # (B, stacks, K, h, w)
        return unknown_label[:, None, :, None, None].expand_as(value)
    if name == "offset":
        return unknown_label.repeat_interleave(2, dim=1)[:, :, None, None].expand_as(value)
    if name in ("seg", "seg_fine", "seg_paths"):  # paths: (vertebra, disc) pairs
        return seg_unknown.repeat(1, value.shape[1] // 2, 1, 1)
    if name == "spine_region":  # (B, 1, H/4, W/4): known where either mask is
        known = torch.nn.functional.adaptive_max_pool2d((~seg_unknown).float().amax(1, keepdim=True), value.shape[-2:])
        return known == 0
    raise AssertionError(f"output {name!r} is new: say which of its values the batch annotates")


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_architecture_loss_ignores_unannotated_labels_and_unknown_mask_pixels(name):
    config = TINY[name].config
    net, loss_fn = build(name, config).train(), registry.loss_for(name, config).train()
    if hasattr(loss_fn, "steps"):
        loss_fn.steps = 10**6  # SpineOne: with its objective association on
    batch = _partly_annotated_batch()
    outputs = {k: v.detach().requires_grad_(True) for k, v in net(batch["image"]).items()}
    torch.manual_seed(1)  # HCA-Net's skeleton term samples its prototypes
    total, _ = loss_fn(outputs, batch)
    total.backward()
    grads = {k: torch.zeros_like(v) if v.grad is None else v.grad for k, v in outputs.items()}  # None: unused
    perturbed = {}
    for key, value in outputs.items():
        unknown = _unknown(key, value, batch)
        assert unknown.any() and not unknown.all(), key
        assert torch.all(grads[key][unknown] == 0), f"{name}: {key} learns where nothing is annotated"
        perturbed[key] = torch.where(unknown, value.detach() + 5 * torch.randn_like(value), value.detach())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    torch.manual_seed(1)
    assert torch.allclose(loss_fn(perturbed, batch)[0], total.detach(), rtol=1e-5, atol=1e-6)
