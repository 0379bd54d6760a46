"""Every results file a notebook reads comes from the checkpoints shipped now: each entry computed
from a checkpoint records its file hash (`bench.common.checkpoint_stamp`), and the convergence
report's final AP equals each shipped model's manifest. A checkpoint replaced without re-running
the bench that reads it fails here, naming the file and the command to re-run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.common import file_sha256

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
COMMANDS = {"latency.json": "python bench/latency.py", "figures.json": "python bench/figures.py"}


def stamps(node, where: str = "") -> list[tuple[str, dict]]:
    """Every {"path", "sha256"} entry in a JSON tree, with where it sits."""
    found = []
    if isinstance(node, dict):
        if "path" in node and "sha256" in node:
            found.append((where, node))
        for k, v in node.items():
            found += stamps(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += stamps(v, f"{where}[{i}]")
    return found


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_results_come_from_the_shipped_checkpoints(name):
    report = json.loads((RESULTS / name).read_text())
    found = stamps(report)
    assert found, f"bench/results/{name} records no checkpoint hashes: re-run `{COMMANDS[name]}`"
    for where, stamp in found:
        path = ROOT / stamp["path"]
        assert path.exists(), f"bench/results/{name}{where}: {stamp['path']} is not shipped"
        assert file_sha256(path) == stamp["sha256"], (
            f"bench/results/{name}{where} was computed from an older {stamp['path']}: re-run `{COMMANDS[name]}`")


def test_convergence_report_ends_where_the_shipped_models_end():
    report = json.loads((RESULTS / "convergence.json").read_text())
    checked = 0
    for name, summary in report["summary"].items():
        manifest = ROOT / "data" / "checkpoints" / f"{name}.json"
        if not manifest.exists():
            continue  # a run that was not shipped (e.g. detr_tiny_scratch)
        trained = json.loads(manifest.read_text())["ap_curve"][-1]  # the run's last evaluation (float32 weights)
        assert (summary["epochs"], summary["final"]["AP"]) == (trained["epoch"] + 1, pytest.approx(trained["AP"], abs=1e-4)), (
            f"bench/results/convergence.json's {name} ends at epoch {summary['epochs']}, AP {summary['final']['AP']}; "
            f"the shipped checkpoint's run ended at epoch {trained['epoch'] + 1}, AP {trained['AP']}: "
            f"re-run `python bench/convergence.py report --runs ...`")
        checked += 1
    assert checked > 0
