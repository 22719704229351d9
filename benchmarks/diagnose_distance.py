"""Where the distance to target of the points named right comes from: left-right, superior-inferior or front-back.

    python benchmarks/diagnose_distance.py [--model ivdnet-lumbar] [--data ../shared/data/lumbar]
                                           [--all-held-out] [--sources VB1 ...] [--device cpu|cuda]

Predicts every judged case once (the held-out dev cases of the model's split, or with
``--all-held-out`` every labelled case it did not train on) and compares each named structure
with the reference of the same name on the sagittal display grid, in mm: left-right (across the
sagittal slices), superior-inferior and anterior-posterior. Points more than 5 mm from their
own reference are left out: they are identification errors, which ``bench_predict.py`` counts.
Per source and kind it prints the mean distance of the rest and, per axis, the mean signed
error (a bias) and the RMS (its spread included). Figures only.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import numpy as np
from judged_scans import add_model_and_scan_options, load_model, scans_to_judge

from napari_ivd import anatomy
from napari_ivd.inference import predict
from napari_ivd.io import SagittalView

#: The display grid's axes, in its order.
AXES = ("left-right", "superior-inferior", "anterior-posterior")
#: A point farther than this from its own reference is wrong, not imprecise (identification's distance).
RIGHT_WITHIN_MM = 5.0


def _by_name(view: SagittalView, ijk_by_name: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each level's file-grid voxel index as display-grid mm."""
    names = list(ijk_by_name)
    ijk = np.array([ijk_by_name[n] for n in names], float).reshape(-1, 3)
    return dict(zip(names, view.vox_to_display_mm(ijk), strict=True))


def signed_errors(
    predicted: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], within_mm: float = RIGHT_WITHIN_MM
) -> dict[str, list[np.ndarray]]:
    """Predicted minus reference position, per kind, for each level named within ``within_mm`` of its own reference.

    Both maps take a level name to its display-grid mm; levels only one of them has are not judged.
    """
    out: dict[str, list[np.ndarray]] = {}
    for name in predicted.keys() & reference.keys():
        error = np.asarray(predicted[name], float) - np.asarray(reference[name], float)
        if np.linalg.norm(error) <= within_mm:
            out.setdefault(anatomy.structure(name).kind, []).append(error)
    return out


def summary_line(label: str, errors: list[np.ndarray]) -> str:
    """One group's mean distance and, per axis, mean signed error and RMS, in words."""
    e = np.asarray(errors, float).reshape(-1, 3)
    axes = "  ".join(
        f"{axis} {mean:+.2f} / {rms:.2f}"
        for axis, mean, rms in zip(AXES, e.mean(0), np.sqrt((e**2).mean(0)), strict=True)
    )
    return f"{label:22s} n={len(e):3d}  distance {np.linalg.norm(e, axis=1).mean():.2f} mm  |  {axes}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_scan_options(parser)
    args = parser.parse_args()

    model, card, device = load_model(args)
    cases = scans_to_judge(args, card)
    groups: dict[str, list[np.ndarray]] = {}
    for case in cases:
        view = case.volume.view
        structures = predict(case.volume, model, card, device).structures
        predicted = _by_name(view, {s.name: s.ijk_vox for s in structures})
        reference = _by_name(view, case.keypoints_vox)
        source = case.name.split("/")[0]
        for kind, errors in signed_errors(predicted, reference).items():
            for label in (f"all {kind}", f"{source} {kind}"):
                groups.setdefault(label, []).extend(errors)
    print(
        f"model {card['name']}: {len(cases)} cases; points within {RIGHT_WITHIN_MM:g} mm of their own reference; "
        "per axis: mean signed error / RMS, mm (display grid: left-right, superior-inferior, anterior-posterior)"
    )
    for label in sorted(groups, key=lambda g: (not g.startswith("all"), g)):
        print(summary_line(label, groups[label]))


if __name__ == "__main__":
    main()
