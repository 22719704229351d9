"""Refit one run of the adaptation benchmark with one thing changed, and say which names moved.

    python benchmarks/diagnose_adapt_run.py --source VB1 --seed 1 --k 1 [--base ivdnet-lumbar]
        [--lr 1e-4] [--epochs 12] [--freeze-norm] [--names-unsure VB1/case-16] [--largest-k 4] [--minutes 5]
    python benchmarks/diagnose_adapt_run.py --corrected VB1/case-16 --scored VB1/case-15 VB1/case-17 ...

The run is the one ``bench_adapt.py --base BASE --sources SOURCE --seeds SEED --ks ... K``
makes (the same corrected and scored cases; ``--largest-k`` is that command's largest k,
which decides the scored cases): the viewer's Train on a store of the k corrected cases,
with the learning rate, epochs or batch-norm statistics changed, or some corrected cases
marked "level names unsure" (they then teach masks only), if asked. Prints, per
scored case, identification with the sacrum anchor on and off, and the structures the new
version names where the reference names another structure of their kind (a chain named one
level off lists every level). ``--corrected`` and ``--scored`` name the cases instead of a
seed. Figures only: one refit, one seed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_adapt import DATA, _cases, _draw, _store_with, score
from torch.nn.modules.batchnorm import _BatchNorm

from napari_ivd import inference
from napari_ivd.metrics import renamed_levels
from napari_ivd.model_versions import model_folder
from napari_ivd.models import load_checkpoint, read_card
from napari_ivd.training.cases import LabelledCase
from napari_ivd.training.finetune import FineTuneConfig, finetune_steps
from napari_ivd.worklist import run_steps


def _freeze_norm_statistics() -> None:
    """Batch-norm layers keep the parent's running statistics while the rest trains (patches ``Module.train``)."""
    train = torch.nn.Module.train

    def train_keeping_norms(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
        train(self, mode)
        for module in self.modules():
            if isinstance(module, _BatchNorm):
                module.training = False
        return self

    torch.nn.Module.train = train_keeping_norms


def _renamed(model: torch.nn.Module, card: dict, case: LabelledCase) -> dict[str, str]:
    named = {s.name: s.xyz_mm for s in inference.predict(case.volume, model, card, "cpu").structures}
    to_mm = case.volume.geometry.vox_to_mm
    reference = {name: to_mm(np.asarray(ijk)[None])[0] for name, ijk in case.keypoints_vox.items()}
    return renamed_levels(named, reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--source", default="VB1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--corrected", nargs="+", help="these cases, not the seed's first k")
    parser.add_argument("--scored", nargs="+", help="these cases, not the seed's")
    parser.add_argument("--largest-k", type=int, default=4)
    parser.add_argument("--base", default="ivdnet-lumbar")
    parser.add_argument("--minutes", type=float, default=FineTuneConfig.minutes)
    parser.add_argument("--epochs", type=int, default=80, help="the benchmark's --max-epochs, or fewer")
    parser.add_argument("--lr", type=float, default=FineTuneConfig.lr)
    parser.add_argument("--freeze-norm", action="store_true", help="keep the base's batch-norm statistics")
    parser.add_argument(
        "--names-unsure", nargs="+", default=[], metavar="CASE", help="mark these corrected cases' level names unsure"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.freeze_norm:
        _freeze_norm_statistics()

    cases = _cases(args.data)
    names = sorted(n for n in cases if n.split("/")[0] == args.source)
    base = model_folder(None, args.base)
    seen = [n for n, c in cases.items() if c.seen_in(read_card(base).get("trained_on", []))]
    order, scored = _draw(names, args.seed, args.largest_k, seen, {n: c.same_session for n, c in cases.items()})
    corrected = args.corrected or order[: args.k]
    scored = args.scored or scored
    cfg = FineTuneConfig(minutes=args.minutes, epochs=args.epochs, lr=args.lr, device=args.device, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="diagnose-adapt-") as tmp:
        store = _store_with([cases[n] for n in corrected], Path(tmp), names_unsure=args.names_unsure)
        store.add_model(base, model_id="base")
        store.set_active_model("base", stored=True, reason="diagnosis")
        result = run_steps(finetune_steps(store, cfg, author="diagnose_adapt_run"))
        model, card = load_checkpoint(model_folder(store, result.model.model_id))
    unsure = f" (level names unsure: {', '.join(args.names_unsure)})" if args.names_unsure else ""
    print(f"trained on {', '.join(corrected)}{unsure}: {card.get('steps')} steps; {result.reason}")
    device = torch.device(args.device)
    anchored = inference.anchor_on_sacrum
    for name in scored:
        on = score(model, card, [cases[name]], device)["identification"]
        inference.anchor_on_sacrum = lambda chosen, candidates, labels: (dict(chosen), False)
        off = score(model, card, [cases[name]], device)["identification"]
        inference.anchor_on_sacrum = anchored
        moved = ", ".join(f"{new} at {old}" for new, old in _renamed(model, card, cases[name]).items()) or "none"
        print(f"{name}: identification {100 * on:.1f} % (sacrum anchor off: {100 * off:.1f} %); renamed: {moved}")


if __name__ == "__main__":
    main()
