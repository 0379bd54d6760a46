"""Training curves from committed results: the per-epoch validation records (AP, and the
instability score IS of DN-DETR Fig. 2, `tutorial/training/instability.py`) that notebook 05
plots with `tutorial.viz.denoising.plot_instability_and_ap`.

They come from bench/convergence.py's report (bench/results/convergence.json, "curves") or, for a
run it does not have, from a shipped checkpoint's manifest (`tutorial/training/ship.py`, its
"ap_curve", which carries no IS).
"""
from __future__ import annotations

import json
from pathlib import Path


def load_training_curves(names, convergence: str | Path, checkpoints: str | Path) -> tuple[dict, dict]:
    """Per-epoch validation records of the runs `names` from committed results, for
    `plot_instability_and_ap`. For each name: bench/convergence.py's report (`convergence`, its
    "curves"[name]) if it has that run, else the shipped checkpoint's manifest
    (`checkpoints`/<name>.json, its "ap_curve", which carries no IS). Returns ({name: [record with
    "epoch", "AP", ... and "IS" where recorded]}, {name: the file it came from}); a name found in
    neither is in neither dict."""
    convergence, checkpoints = Path(convergence), Path(checkpoints)
    report = json.loads(convergence.read_text()).get("curves", {}) if convergence.exists() else {}
    curves, sources = {}, {}
    for name in names:
        manifest = checkpoints / f"{name}.json"
        if report.get(name):
            curves[name], sources[name] = report[name], str(convergence)
        elif manifest.exists() and json.loads(manifest.read_text()).get("ap_curve"):
            curves[name], sources[name] = json.loads(manifest.read_text())["ap_curve"], str(manifest)
    return curves, sources
