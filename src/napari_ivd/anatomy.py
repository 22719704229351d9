"""The one anatomy vocabulary of napari-ivd: vertebrae, discs, their label values and colours.

Every other module names spinal levels through this table, so that SCT point labels,
TotalSpineSeg masks, napari layers and the user's typing all agree on what "L4-L5" is.

The spine is modelled as one cranio-caudal sequence

    C1, C1-C2, C2, C2-C3, ..., C7, C7-T1, T1, ..., T12, T12-L1, L1, ..., L5, L5-S1, S1

where S1 stands for the whole sacrum. Each entry is a frozen :class:`Structure` carrying its
SCT value, its TotalSpineSeg (TSS) value and a fixed display colour. The tables are generated
from the list of regions below, not written out by hand.
"""

from __future__ import annotations

import colorsys
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal

from napari_ivd.errors import UnknownLevelError

__all__ = [
    "DISCS",
    "KIND_PLURAL",
    "LUMBAR_LABELS",
    "RGBA",
    "SACRAL_DISC",
    "STRUCTURES",
    "TSS_CANAL",
    "TSS_CORD",
    "TSS_SACRUM",
    "VERTEBRAE",
    "Kind",
    "Structure",
    "disc_between",
    "from_sct_disc",
    "from_sct_level",
    "from_tss",
    "normalize_name",
    "shift",
    "span",
    "structure",
    "tss_colormap",
    "tss_names",
]

Kind = Literal["vertebra", "disc"]
#: Plural of each kind, for layer names and reports.
KIND_PLURAL: dict[str, str] = {"vertebra": "vertebrae", "disc": "discs"}
RGBA = tuple[float, float, float, float]

#: TotalSpineSeg mask values that are not vertebrae or discs.
TSS_CORD = 1
TSS_CANAL = 2
#: TotalSpineSeg mask value of the sacrum (our "S1").
TSS_SACRUM = 50
#: The lowest disc, between L5 and the sacrum: where counting levels from the sacrum starts.
SACRAL_DISC = "L5-S1"

# Regions in cranio-caudal order with their vertebra count; S1 is the sacrum as a whole.
_REGIONS: tuple[tuple[str, int], ...] = (("C", 7), ("T", 12), ("L", 5), ("S", 1))

# TotalSpineSeg: vertebra value = region base + number; disc value = region base of the
# vertebra BELOW + its number (C2-C3 = 63, C7-T1 = 71, T12-L1 = 91). The exceptions follow.
_TSS_VERTEBRA_BASE = {"C": 10, "T": 20, "L": 40}
_TSS_DISC_BASE = {"C": 60, "T": 70, "L": 90}
_TSS_EXCEPTIONS: dict[str, int | None] = {"S1": TSS_SACRUM, "C1-C2": None, "L5-S1": 100}
_TSS_OTHER_NAMES = {TSS_CORD: "spinal cord", TSS_CANAL: "spinal canal"}

# Colours: hue steps by the golden ratio per vertebra, so neighbours are ~137° apart on the
# colour wheel and no two of the 25 hues coincide. A disc takes its upper vertebra's hue, but
# brighter and more saturated than the (darker, softer) vertebrae.
_GOLDEN_HUE_STEP = (3 - 5**0.5) / 2  # 0.382 of a turn = 137.5°
_VERTEBRA_SAT_VAL = (0.55, 0.70)
_DISC_SAT_VAL = (0.8, 1.0)
_TRANSPARENT: RGBA = (0.0, 0.0, 0.0, 0.0)
_TSS_OTHER_COLOURS: dict[int, RGBA] = {TSS_CORD: (0.95, 0.95, 0.2, 1.0), TSS_CANAL: (0.3, 0.75, 1.0, 0.45)}

_NAME_HINT = "expected a vertebra C1–C7, T1–T12, L1–L5, S1 (sacrum) or a disc between neighbours like L4-L5"


@dataclass(frozen=True, slots=True)
class Structure:
    """One vertebra or intervertebral disc, with every label value napari-ivd maps it to.

    Attributes
    ----------
    name : str
        Canonical name: "L4" for a vertebra, "L4-L5" for a disc (upper level first).
    kind : {"vertebra", "disc"}
    order : int
        Position in the combined cranio-caudal sequence (C1 = 0, C1-C2 = 1, C2 = 2, ...).
    sct_value : int
        SCT label value: vertebral level for a vertebra (C1 = 1 ... S1 = 25), disc-point
        value for a disc, i.e. the number of the vertebra below (C1-C2 = 2 ... L5-S1 = 25).
    tss_value : int or None
        TotalSpineSeg mask value, None where TotalSpineSeg has none (C1-C2).
    colour : tuple of 4 floats
        Fixed RGBA display colour in 0..1.
    upper, lower : str or None
        For a disc, the names of the vertebrae above and below it; None for a vertebra.
    """

    name: str
    kind: Kind
    order: int
    sct_value: int
    tss_value: int | None
    colour: RGBA
    upper: str | None = None
    lower: str | None = None

    @property
    def is_disc(self) -> bool:
        """True for an intervertebral disc."""
        return self.kind == "disc"

    @property
    def is_vertebra(self) -> bool:
        """True for a vertebra (including S1, the sacrum)."""
        return self.kind == "vertebra"

    @property
    def region(self) -> str:
        """Spinal region letter "C", "T", "L" or "S"; a disc belongs to its upper vertebra's region."""
        return self.name[0]

    def __str__(self) -> str:
        return self.name


def _hsv(hue: float, sat_val: tuple[float, float]) -> RGBA:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, *sat_val)
    return (r, g, b, 1.0)


def _tss_value(name: str, lower_vertebra: str | None = None) -> int | None:
    if name in _TSS_EXCEPTIONS:
        return _TSS_EXCEPTIONS[name]
    if lower_vertebra is None:
        return _TSS_VERTEBRA_BASE[name[0]] + int(name[1:])
    return _TSS_DISC_BASE[lower_vertebra[0]] + int(lower_vertebra[1:])


def _build() -> tuple[Structure, ...]:
    names = [f"{region}{n}" for region, count in _REGIONS for n in range(1, count + 1)]
    out: list[Structure] = []
    for i, name in enumerate(names):
        hue = i * _GOLDEN_HUE_STEP
        out.append(Structure(name, "vertebra", len(out), i + 1, _tss_value(name), _hsv(hue, _VERTEBRA_SAT_VAL)))
        if i + 1 < len(names):
            below = names[i + 1]
            disc = f"{name}-{below}"
            colour = _hsv(hue, _DISC_SAT_VAL)
            out.append(Structure(disc, "disc", len(out), i + 2, _tss_value(disc, below), colour, name, below))
    return tuple(out)


#: Every structure in cranio-caudal order, vertebrae and discs alternating.
STRUCTURES: tuple[Structure, ...] = _build()
#: The 25 vertebrae C1 ... S1 (S1 = sacrum), cranio-caudal.
VERTEBRAE: tuple[Structure, ...] = tuple(s for s in STRUCTURES if s.is_vertebra)
#: The 24 discs C1-C2 ... L5-S1, cranio-caudal.
DISCS: tuple[Structure, ...] = tuple(s for s in STRUCTURES if s.is_disc)

_BY_NAME = {s.name: s for s in STRUCTURES}
_BY_SCT_LEVEL = {s.sct_value: s for s in VERTEBRAE}
_BY_SCT_DISC = {s.sct_value: s for s in DISCS}
_BY_TSS = {s.tss_value: s for s in STRUCTURES if s.tss_value is not None}

_SEPARATOR = r"\s*[-/_–—]?\s*"
_NAME_RE = re.compile(
    rf"([CTLS])(\d{{1,2}})"  # upper (or only) vertebra
    rf"(?:{_SEPARATOR}([CTLS])(\d{{1,2}})"  # L4-L5, L4/L5, L4L5, L4 L5
    rf"|\s*[-/_–—]\s*(\d{{1,2}}))?"  # L4-5: the lower vertebra in the same region
)


def normalize_name(name: str) -> str:
    """Return the canonical name of a vertebra or disc from a loosely spelled one.

    Accepts any case, surrounding spaces and the usual disc spellings ("L4/L5", "l4-l5",
    "L4L5", "L4 - L5", "L4-5") plus "sacrum", so names typed by users or found in file
    names map onto one vocabulary.

    Raises
    ------
    UnknownLevelError
        When the text names no known vertebra, or a disc between non-neighbouring vertebrae.
    """
    if not isinstance(name, str):
        raise UnknownLevelError(f"unknown level {name!r}: not a name; {_NAME_HINT}")
    text = name.strip().upper()
    if text == "SACRUM":
        return "S1"
    match = _NAME_RE.fullmatch(text)
    if match is None:
        raise UnknownLevelError(f"unknown level {name!r}; {_NAME_HINT}")
    region, number, lower_region, lower_number, same_region_number = match.groups()
    upper = f"{region}{int(number)}"
    if lower_number is not None:
        lower: str | None = f"{lower_region}{int(lower_number)}"
    elif same_region_number is not None:
        lower = f"{region}{int(same_region_number)}"
    else:
        lower = None
    for vertebra in (upper, lower):
        if vertebra is not None and vertebra not in _BY_NAME:
            raise UnknownLevelError(f"unknown level {name!r} ({vertebra} does not exist); {_NAME_HINT}")
    if lower is None:
        return upper
    canonical = f"{upper}-{lower}"
    if canonical not in _BY_NAME:
        raise UnknownLevelError(
            f"unknown level {name!r}: {upper} and {lower} are not neighbouring vertebrae, so no disc lies "
            f"between them; {_NAME_HINT}"
        )
    return canonical


def structure(name: str | Structure) -> Structure:
    """Look up a vertebra or disc by (loosely spelled) name; a :class:`Structure` passes through.

    Raises
    ------
    UnknownLevelError
        When the name is not a known vertebra or disc (see :func:`normalize_name`).
    """
    if isinstance(name, Structure):
        name = name.name
    return _BY_NAME[normalize_name(name)]


def _as_label(value: object) -> int | None:
    """The integer a label value stands for (ints, numpy ints, integral floats), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real) and float(value).is_integer():
        return int(value)
    return None


def _lookup(table: dict[int, Structure], value: object, what: str, hint: str) -> Structure:
    label = _as_label(value)
    if label is None or label not in table:
        shown = value if label is None else label
        raise UnknownLevelError(f"unknown {what} {shown!r}; {hint}")
    return table[label]


def _span(items: tuple[Structure, ...]) -> str:
    first, last = items[0], items[-1]
    return f"{first.sct_value} ({first.name}) … {last.sct_value} ({last.name})"


def _ranges(values: Iterable[int]) -> str:
    """Compress sorted integers into runs: 11, 12, 13, 50 -> "11–13, 50"."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def from_sct_level(value: int) -> Structure:
    """The vertebra of an SCT vertebral-level label value (C1 = 1 ... L5 = 24, S1 = 25).

    Raises
    ------
    UnknownLevelError
        When the value is no SCT vertebral level.
    """
    return _lookup(_BY_SCT_LEVEL, value, "SCT vertebral level", f"expected an integer {_span(VERTEBRAE)}")


def from_sct_disc(value: int) -> Structure:
    """The disc of an SCT disc-point label value, i.e. the number of the vertebra below it.

    C1-C2 = 2, C2-C3 = 3, ..., C7-T1 = 8, ..., T12-L1 = 20, ..., L5-S1 = 25.

    Raises
    ------
    UnknownLevelError
        When the value is no SCT disc label (SCT's 1, 49 and 50 mark no disc).
    """
    return _lookup(_BY_SCT_DISC, value, "SCT disc value", f"expected an integer {_span(DISCS)}")


def from_tss(value: int) -> Structure:
    """The vertebra or disc of a TotalSpineSeg mask value (e.g. 41 = L1, 100 = L5-S1).

    Raises
    ------
    UnknownLevelError
        When the value is no TotalSpineSeg vertebra or disc, including 1 (cord) and 2 (canal).
    """
    label = _as_label(value)
    if label in _TSS_OTHER_NAMES:
        raise UnknownLevelError(f"TotalSpineSeg value {label} is the {_TSS_OTHER_NAMES[label]}, not a vertebra or disc")
    vertebrae = _ranges(s.tss_value for s in VERTEBRAE if s.tss_value is not None)
    discs = _ranges(s.tss_value for s in DISCS if s.tss_value is not None)
    hint = f"expected a vertebra {vertebrae} or a disc {discs}"
    return _lookup(_BY_TSS, value, "TotalSpineSeg value", hint)


def disc_between(upper_vertebra: str | Structure, lower_vertebra: str | Structure) -> Structure:
    """The disc between two neighbouring vertebrae, given in either order.

    Raises
    ------
    UnknownLevelError
        When either name is unknown or a disc, or the vertebrae are not neighbours.
    """
    upper, lower = structure(upper_vertebra), structure(lower_vertebra)
    for s in (upper, lower):
        if not s.is_vertebra:
            raise UnknownLevelError(f"{s.name!r} is a disc; disc_between() expects two vertebrae such as L4, L5")
    if upper.order > lower.order:
        upper, lower = lower, upper
    if lower.order - upper.order != 2:
        raise UnknownLevelError(
            f"no disc between {upper.name} and {lower.name}: they are not neighbours "
            f"(the disc below {upper.name} is {STRUCTURES[upper.order + 1].name})"
        )
    return STRUCTURES[upper.order + 1]


def shift(name: str | Structure, steps: int) -> Structure:
    """The structure of the same kind ``steps`` levels further caudal (negative: cranial).

    Used to relabel a whole spine that was labelled one level off: ``shift("L5", 1)`` is S1,
    ``shift("L4-L5", -1)`` is L3-L4, ``shift("T12", 1)`` is L1.

    Raises
    ------
    UnknownLevelError
        When the name is unknown or the shift runs past C1 / C1-C2 or S1 / L5-S1.
    """
    start = structure(name)
    steps = operator.index(steps)
    sequence = VERTEBRAE if start.is_vertebra else DISCS
    target = sequence.index(start) + steps
    if not 0 <= target < len(sequence):
        raise UnknownLevelError(
            f"shifting {start.name} by {steps:+d} leaves the spine: {start.kind}s run from "
            f"{sequence[0].name} to {sequence[-1].name}"
        )
    return sequence[target]


def span(first: str | Structure, last: str | Structure) -> tuple[str, ...]:
    """Names of every structure from ``first`` to ``last`` inclusive, cranio-caudal.

    Raises
    ------
    UnknownLevelError
        When a name is unknown or ``last`` lies above ``first``.
    """
    top, bottom = structure(first), structure(last)
    if bottom.order < top.order:
        raise UnknownLevelError(f"{bottom.name} lies above {top.name}; give the span top first")
    return tuple(s.name for s in STRUCTURES[top.order : bottom.order + 1])


def tss_colormap() -> dict[int, RGBA]:
    """Colours for a TotalSpineSeg label image, ready for a napari Labels layer.

    Maps every TotalSpineSeg value to its structure's RGBA colour, 0 (background) to fully
    transparent, and 1/2 (spinal cord/canal) to fixed colours. A new dict on every call.
    """
    colours: dict[int, RGBA] = {0: _TRANSPARENT, **_TSS_OTHER_COLOURS}
    colours.update((value, s.colour) for value, s in sorted(_BY_TSS.items()))
    return colours


def tss_names() -> dict[int, str]:
    """Names of the TotalSpineSeg values: structure names, plus "spinal cord"/"spinal canal" for 1/2."""
    names: dict[int, str] = dict(_TSS_OTHER_NAMES)
    names.update((value, s.name) for value, s in sorted(_BY_TSS.items()))
    return names


#: The levels the bundled lumbar data annotates (T11 ... L5-S1): the default model label set.
LUMBAR_LABELS: tuple[str, ...] = span("T11", "L5-S1")
