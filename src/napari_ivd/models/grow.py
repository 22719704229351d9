"""Grow a trained network to more levels: per-label channels copied by name, new neighbours start silent.

A lumbar model fine-tuned on cervical cases must learn C3 without forgetting L4. Every
architecture keeps one heatmap channel (and two offset channels, and whatever else its own
loss reads) per label, and declares where in its state dict those channels lie
(:meth:`~napari_ivd.models.conventions.PipelineNet.label_axes`). :func:`grow_labels` builds
the same architecture with more labels and fills it from the trained one:

* every weight not tied to labels is copied as is;
* a per-label channel of an old label is copied from that label's channel;
* a new label's per-label channels start as a copy of the nearest old level of the same
  kind (a disc from the nearest disc, a vertebra from the nearest vertebra; of any kind
  when the network has none of that kind), except its heatmap rows
  (:meth:`~napari_ivd.models.conventions.PipelineNet.heatmap_heads`) when that level is its
  next neighbour (:func:`starts_silent`: T10 from T11, S1 from L5): those start silent, with
  zero weights and the architecture's starting bias, so the new level reads the background
  prior (about 0.02) everywhere and is never proposed until training teaches it;
* where a layer *reads* heatmaps (a stacked hourglass feeds each stack's heatmaps to the
  next), the inputs from new labels start at zero, so every old output is unchanged; a new
  label's row reads its own heatmap where its source level read its own.

Why: a copy of the neighbour's detector fires on the neighbour, one level away in the same
scans. Fine-tuned on four T1w scans that add T10, T10-T11 and S1, the starter grown with
copies named an unseen scan one level low from top to bottom; with silent starts it named
it right (docs/fine-tuning-evidence.md). A copy of a distant level (C3 from
T11) gives the new level a head start instead: the cervical scans taught C3-C5 in 480 steps
in 3 of 3 seeds as copies, in 1 of 3 silent.

So on the same input the grown network gives the old network's outputs on the old labels;
on each new label its source level's outputs, but the background prior on the heatmap of a
new neighbour.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch

from napari_ivd.anatomy import structure
from napari_ivd.models.conventions import ChannelKey, PipelineNet, canonical_labels
from napari_ivd.models.registry import to_device

__all__ = ["ADJACENT_ORDER", "grow_labels", "nearest_level", "starts_silent"]

log = logging.getLogger(__name__)


def nearest_level(name: str, candidates: Sequence[str]) -> str:
    """The candidate closest to ``name`` in the cranio-caudal order, of the same kind where one exists.

    Ties go to the cranial candidate. Why the same kind: a disc channel has learnt what a disc
    looks like, which is a better start for another disc than a neighbouring vertebra.

    Raises
    ------
    ValueError
        ``candidates`` is empty.

    Example
    -------
    >>> nearest_level("T10-T11", ["T11", "T11-T12", "L1"])
    'T11-T12'
    >>> nearest_level("C3", ["T11", "T11-T12", "L1"])
    'T11'
    """
    if not candidates:
        raise ValueError(f"no level to start {name} from")
    target = structure(name)
    same_kind = [c for c in candidates if structure(c).kind == target.kind] or list(candidates)
    return min(same_kind, key=lambda c: (abs(structure(c).order - target.order), structure(c).order))


def _sources(axis: Sequence[ChannelKey], old_axis: Sequence[ChannelKey]) -> list[ChannelKey]:
    """For each channel key of the grown axis, the key of the old axis it starts from."""
    old_labels = list(dict.fromkeys(label for label, _ in old_axis))
    source = {label: label if label in old_labels else nearest_level(label, old_labels) for label, _ in axis}
    return [(source[label], part) for label, part in axis]


def _grow_tensor(
    old: torch.Tensor,
    new_shape: torch.Size,
    axes: dict[int, Sequence[ChannelKey]],
    old_axes: dict[int, Sequence[ChannelKey]],
    name: str,
) -> torch.Tensor:
    """One parameter of the grown network from the old one (see the module docstring for the rules)."""
    out = torch.zeros(new_shape, dtype=old.dtype)
    old_index = {dim: {key: i for i, key in enumerate(keys)} for dim, keys in old_axes.items()}
    if set(axes) - {0, 1}:
        raise ValueError(f"{name}: label axes {sorted(axes)} beyond the first two are not supported")
    rows = axes.get(0)
    cols = axes.get(1)
    old_col_labels = {label for label, _ in old_axes.get(1, ())}
    row_sources = _sources(rows, old_axes[0]) if rows is not None else None
    n_rows = new_shape[0]
    for i in range(n_rows):
        src_i = old_index[0][row_sources[i]] if row_sources is not None else i
        if cols is None:
            out[i] = old[src_i]
            continue
        own_label = rows[i][0] if rows is not None else None
        source_label = row_sources[i][0] if row_sources is not None else None
        for j, (label, part) in enumerate(cols):
            if label == own_label:  # a new row reads its own heatmap where its source read its own
                key = (source_label, part)
            elif label in old_col_labels and label != source_label:
                key = (label, part)
            else:  # new inputs start at zero: old outputs stay as they were
                continue
            out[i, j] = old[src_i, old_index[1][key]]
    return out


#: A new level whose source is this close in the cranio-caudal order (the next structure of its
#: kind is 2 away) starts silent; a farther one starts as its source's copy.
ADJACENT_ORDER = 2


def starts_silent(label: str, source: str) -> bool:
    """Whether a new level's heatmap starts silent rather than as a copy of ``source``'s (its nearest level).

    Silent when ``source`` is the next structure: a copy would fire on that neighbour, which
    sits in the same scans one level away, and teach the chain to shift by one (S1 copied
    from L5 named an unseen T1w scan one level low). A copy of a distant level fires on
    structures of the kind in general and gives the new level a head start (C3 copied from
    T11 learnt C3-C5 on the cervical scans in 480 steps in 3 of 3 seeds, silent in 1 of 3).

    Example
    -------
    >>> starts_silent("S1", "L5"), starts_silent("C3", "T11")
    (True, False)
    """
    return abs(structure(label).order - structure(source).order) <= ADJACENT_ORDER


def _silence_new_rows(
    grown: torch.Tensor, fresh: torch.Tensor, axes: dict[int, Sequence[ChannelKey]], sources: Sequence[ChannelKey]
) -> None:
    """Start each new adjacent level's row of a heatmap head as the freshly built network does, less its random weights.

    ``sources`` gives, per row, the (label, part) it was copied from (itself for an old label).
    A bias row keeps the fresh network's starting bias (the background prior) and a weight row
    is zero, so the row's output is that prior everywhere. A head that reads heatmaps (its
    inputs are per label too, like HCA-Net's merge of the stacks) takes the fresh row whole:
    its architecture starts it reading the label's own heatmaps, which are that prior.
    """
    reads_labels = 1 in axes
    for i, ((label, _), (source, _)) in enumerate(zip(axes[0], sources, strict=True)):
        if label != source and starts_silent(label, source):
            grown[i] = fresh[i] if grown.ndim == 1 or reads_labels else 0.0


def grow_labels(model: PipelineNet, labels: Sequence[str]) -> PipelineNet:
    """The same network with ``labels`` (a superset of its own), old channels kept, new ones from their nearest.

    Parameters
    ----------
    model : PipelineNet
        A registered network (any device; left untouched).
    labels : sequence of str
        The grown label set, cranio-caudal; must hold every label of ``model.config.labels``.

    Returns
    -------
    PipelineNet
        A new network of the same class on the same device and in the same mode, with
        ``config.labels == labels``; ``model`` itself when the labels are unchanged.

    Raises
    ------
    ValueError
        ``labels`` drops a label of the model or breaks the config's label rules, or the
        architecture's label axes miss a weight whose shape depends on the labels.

    Example
    -------
    >>> from napari_ivd.models import build
    >>> grown = grow_labels(build("ivdnet"), ["T10", "T10-T11", *build("ivdnet").config.labels])
    >>> grown.config.num_labels
    16
    """
    config = model.config
    labels = canonical_labels(labels, type(config).__name__)
    dropped = [label for label in config.labels if label not in labels]
    if dropped:
        raise ValueError(f"growing {type(model).__name__} to {list(labels)} would drop {dropped}; keep every label")
    if labels == tuple(config.labels):
        return model
    grown = type(model)(dataclasses.replace(config, labels=labels))
    old_state = model.state_dict()
    old_axes, new_axes = model.label_axes(), grown.label_axes()
    heads = set(grown.heatmap_heads())
    state = {}
    for name, tensor in grown.state_dict().items():
        source_name = grown.label_source(name, old_state)
        if source_name not in old_state:
            raise ValueError(f"{type(model).__name__}.{name}: no weight of the smaller network to grow it from")
        old = old_state[source_name]
        axes = new_axes.get(name)
        if axes is None:
            if old.shape != tensor.shape:
                raise ValueError(
                    f"{type(model).__name__}.{name} changes shape with the labels ({tuple(old.shape)} -> "
                    f"{tuple(tensor.shape)}) but label_axes() does not describe it"
                )
            state[name] = old.detach().clone()
            continue
        state[name] = _grow_tensor(old.detach().cpu(), tensor.shape, axes, old_axes[source_name], name)
        if name.rsplit(".", 1)[0] in heads:
            _silence_new_rows(state[name], tensor, axes, _sources(axes[0], old_axes[source_name][0]))
    grown.load_state_dict(state, strict=True)
    grown = to_device(grown, next(model.parameters()).device)
    grown.train(model.training)
    log.info("grew %s from %d to %d labels", type(model).__name__, len(config.labels), len(labels))
    return grown
