"""Growing a trained network to more levels keeps what it knew; new neighbours start silent, far levels as copies.

For every registered architecture: on the same input, the grown network's outputs on the old
labels equal the parent's; each new label's outputs equal those of its nearest old level of
the same kind, except the heatmap of a new label next to that level (L3-L4 from L4-L5), which
is the background prior everywhere (below the weakest score inference keeps, so it is never
proposed before training teaches it).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _arch_contract import TINY, seeded_single_thread  # noqa: F401 (autouse fixture)
from napari_ivd.inference import GAP_MIN_SCORE
from napari_ivd.models import available, build, to_device
from napari_ivd.models.conventions import HEATMAP_INIT_BIAS
from napari_ivd.models.grow import grow_labels, nearest_level, starts_silent

OLD = ("L4", "L4-L5")
#: C3 and S1 are vertebrae (start from L4), L3-L4 and L5-S1 are discs (start from L4-L5, next to
#: them: silent heatmaps); C3 and S1 are farther from L4 (copies).
NEW = ("C3", "L3-L4", "L4", "L4-L5", "L5-S1", "S1")
SOURCE = {"C3": "L4", "L3-L4": "L4-L5", "L4": "L4", "L4-L5": "L4-L5", "L5-S1": "L4-L5", "S1": "L4"}


def _trained_like(name: str, labels: tuple[str, ...]) -> torch.nn.Module:
    """A tiny network whose every weight is random (no two labels' channels alike, as after training)."""
    net = build(name, dataclasses.replace(TINY[name].config, labels=labels))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return to_device(net, "cpu").eval()  # the layout training uses, as the grown network has


def _per_label(out: dict[str, torch.Tensor], label_dims: dict[str, int], k: int) -> dict[str, torch.Tensor]:
    """Each per-label output as (..., K, parts, ...) so that channel k is label k."""
    views = {}
    for key, dim in label_dims.items():
        tensor = out[key]
        parts = tensor.shape[dim] // k
        views[key] = tensor.unflatten(dim, (k, parts))
    return views


def _label_dims(out: dict[str, torch.Tensor]) -> dict[str, int]:
    dims = {"heatmap": 1, "offset": 1}
    dims |= {key: 1 for key in ("heatmap_values", "degeneration") if key in out}
    dims |= {"aux_heatmaps": 2} if "aux_heatmaps" in out else {}
    return dims


#: The heatmap outputs and what a silent channel reads there: logits, or linear values (hourglass heads).
PRIOR = torch.tensor(HEATMAP_INIT_BIAS, dtype=torch.float64)
SILENT = {"heatmap": PRIOR, "heatmap_values": torch.sigmoid(PRIOR), "aux_heatmaps": torch.sigmoid(PRIOR)}


def _check_grown(name: str, old_labels: tuple[str, ...], new_labels: tuple[str, ...], source: dict[str, str]) -> None:
    parent = _trained_like(name, old_labels)
    child = grow_labels(parent, new_labels)
    assert child.config.labels == new_labels and child.config == dataclasses.replace(parent.config, labels=new_labels)
    # in double precision: a deep stack amplifies float32 rounding of the longer sums to ~1e-3
    parent, child = parent.double(), child.double()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        before, after = parent(x), child(x)
    torch.testing.assert_close(after["seg"], before["seg"])
    dims = _label_dims(before)
    assert set(dims) == set(_label_dims(after))
    old = _per_label(before, dims, len(old_labels))
    new = _per_label(after, dims, len(new_labels))
    for key, dim in dims.items():
        for k, label in enumerate(new_labels):
            got = new[key].select(dim, k)
            if label in old_labels or key not in SILENT or not starts_silent(label, source[label]):
                expected = old[key].select(dim, old_labels.index(source[label]))
            else:
                expected = SILENT[key].to(got.dtype).expand_as(got)
            torch.testing.assert_close(got, expected, msg=f"{name} {key} {label}")
    for k, label in enumerate(new_labels):
        if label not in old_labels and starts_silent(label, source[label]):
            assert torch.sigmoid(after["heatmap"][:, k]).max() < GAP_MIN_SCORE, f"{name} {label} would be proposed"


@pytest.mark.parametrize("name", available())
def test_grown_network_keeps_old_outputs_starts_new_neighbours_silent_and_far_levels_as_copies(name: str):
    _check_grown(name, OLD, NEW, SOURCE)


@pytest.mark.parametrize("name", available())
def test_growing_by_one_level_at_either_end(name: str):
    _check_grown(name, OLD, ("L4", "L4-L5", "L5"), {"L4": "L4", "L4-L5": "L4-L5", "L5": "L4"})
    _check_grown(name, OLD, ("L3-L4", "L4", "L4-L5"), {"L3-L4": "L4-L5", "L4": "L4", "L4-L5": "L4-L5"})


def test_spineone_grows_a_whole_substream_for_a_kind_it_had_none_of():
    """A discs-only SpineOne has no vertebra stream: the new stream starts as a copy of the disc stream."""
    _check_grown(
        "spineone", ("L3-L4", "L4-L5"), ("L3-L4", "L4", "L4-L5"), {"L3-L4": "L3-L4", "L4": "L3-L4", "L4-L5": "L4-L5"}
    )


def test_grown_network_trains_its_new_channels():
    child = grow_labels(_trained_like("ivdnet", OLD), NEW).train()
    child(torch.rand(2, 1, 32, 32))["heatmap"][:, NEW.index("C3")].sum().backward()
    assert child.heatmap.weight.grad[NEW.index("C3")].abs().sum() > 0


def test_growing_refuses_to_drop_a_level_and_keeps_the_same_labels_as_is():
    parent = _trained_like("unet", OLD)
    with pytest.raises(ValueError, match=r"would drop \['L4-L5'\]"):
        grow_labels(parent, ("L4", "L5"))
    assert grow_labels(parent, ["l4", "L4/L5"]) is parent


def test_growing_names_a_label_sized_weight_its_architecture_does_not_describe(monkeypatch):
    """A new architecture that forgets a per-label weight in label_axes() fails loudly, not silently."""
    from napari_ivd.models.hcanet import HcaNet

    monkeypatch.setattr(HcaNet, "label_axes", lambda self: super(HcaNet, self).label_axes())
    with pytest.raises(ValueError, match=r"merge\.weight changes shape"):
        grow_labels(_trained_like("hcanet", OLD), NEW)


@pytest.mark.parametrize(
    ("name", "candidates", "expected"),
    [
        ("T10-T11", ("T11", "T11-T12", "L1"), "T11-T12"),
        ("C3", ("T11", "T11-T12"), "T11"),
        ("S1", ("L4-L5", "L5-S1"), "L5-S1"),  # no vertebra to start from: the nearest of any kind
        ("L3", ("L2", "L4"), "L2"),  # a tie goes to the cranial level
    ],
)
def test_nearest_level(name: str, candidates: tuple[str, ...], expected: str):
    assert nearest_level(name, candidates) == expected


@pytest.mark.parametrize(
    ("label", "source", "silent"),
    [
        ("S1", "L5", True),
        ("T10-T11", "T11-T12", True),
        ("S1", "L5-S1", True),
        ("S1", "L4", False),
        ("C3", "T11", False),
    ],
)
def test_a_new_level_starts_silent_only_next_to_its_source(label: str, source: str, silent: bool):
    assert starts_silent(label, source) is silent
