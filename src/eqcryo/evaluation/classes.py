"""How well predicted classes match a simulation's truth (evaluation only).

The truth is a mixture's ``truth.csv`` (:mod:`eqcryo.data.mixture`): each particle's class
(1-based species, 0 junk) and kind. Predicted classes are 1…K and 0 for junk; class numbers
are arbitrary, so each species is matched to the predicted class holding most of it.
"""

from __future__ import annotations

import numpy as np
import torch

from .metrics import fsc_to_ground_truth, pose_metrics

__all__ = ["class_agreement", "class_map_fsc"]


def class_agreement(pred: np.ndarray, true: np.ndarray, kinds: np.ndarray | None = None,
                    kept: np.ndarray | None = None) -> dict:
    """Per species: the predicted class holding most of it and that share; whether the species
    went to different classes; junk: the share left out (class 0) per kind; with ``kept`` (a
    boolean selection, e.g. ``eqcryo select``'s), the shares of real particles and junk kept."""
    pred, true = np.asarray(pred, dtype=int), np.asarray(true, dtype=int)
    out: dict = {"species": {}, "confusion": {}}
    for s in sorted(set(true[true > 0].tolist())):
        members = pred[true == s]
        counts = np.bincount(members, minlength=pred.max() + 1)
        counts_real = counts.copy()
        counts_real[0] = 0  # a species "in" the junk sink is not in a class
        c = int(counts_real.argmax())
        out["species"][s] = {"n": int(len(members)), "class": c, "share": float(counts[c] / len(members)),
                             "junk_share": float(counts[0] / len(members))}
        out["confusion"][s] = counts.tolist()
    chosen = [v["class"] for v in out["species"].values()]
    out["species_in_different_classes"] = len(set(chosen)) == len(chosen)
    junk = true == 0
    if junk.any():
        out["junk_dropped"] = float((pred[junk] == 0).mean())
        if kinds is not None:
            kinds = np.asarray(kinds)
            out["junk_dropped_by_kind"] = {str(k): float((pred[junk & (kinds == k)] == 0).mean())
                                           for k in sorted(set(kinds[junk].tolist()))}
    if kept is not None:
        kept = np.asarray(kept, dtype=bool)
        out["real_kept"] = float(kept[~junk].mean())
        out["junk_kept"] = float(kept[junk].mean()) if junk.any() else None
    return out


def class_map_fsc(volume: torch.Tensor, gt_volume: torch.Tensor, R_pred: torch.Tensor, R_true: torch.Tensor,
                  apix: float) -> dict:
    """A class map against its species' truth, aligned through the poses of the species'
    particles in that class (predicted R_pred vs true R_true, (n, 3, 3))."""
    m, al = pose_metrics(R_pred, R_true)
    res, _ = fsc_to_ground_truth(volume, gt_volume, al, apix)
    return {"pose_mse": m["pose_mse"], "pose_medse": m["pose_medse"], "n": int(len(R_pred)),
            "resolution_0.5_angstrom": res.resolution(0.5), "resolution_0.143_angstrom": res.resolution(0.143)}
