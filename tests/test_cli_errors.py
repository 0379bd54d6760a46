"""`python -m tutorial` on bad input: one line on stderr naming the file or field, exit status 2;
`--debug` shows the traceback. Every case fails before a model is built (a few seconds each,
nearly all of it importing torch)."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tutorial.__main__ import main
from tutorial.training.checkpoint import CheckpointError
from tutorial.data.dataset import DatasetError
from tutorial.errors import ConfigError, InputError, UnknownModelError
from tutorial.models import model_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """A shapes-like folder with truncated annotations, a file that is not a checkpoint, and a
    checkpoint (of detr_tiny, empty weights) good enough to get past the checkpoint checks."""
    root = tmp_path_factory.mktemp("bad")
    for split in ("train", "val"):
        (root / "shapes" / split / "images").mkdir(parents=True)
        (root / "shapes" / split / "instances.json").write_text('{"images": [{"id": 1, "file_name": ')
    (root / "junk.pt").write_text("not a checkpoint")
    torch.save({"preset": "detr_tiny", "config": dataclasses.asdict(model_config("detr_tiny")), "model": {}},
               root / "detr_tiny.pt")
    return {"data": root / "shapes", "junk": root / "junk.pt", "ckpt": root / "detr_tiny.pt", "out": root / "run"}


# (arguments, what the line must name, the exception --debug lets through)
CASES = {
    "missing checkpoint": (lambda b: ["eval", "--checkpoint", "/nonexistent.pt"],
                           "/nonexistent.pt: checkpoint file does not exist", CheckpointError),
    "unknown model": (lambda b: ["train", "--model", "nope"], "unknown model 'nope'; choose one of", UnknownModelError),
    "missing data folder": (lambda b: ["eval", "--checkpoint", str(b["ckpt"]), "--data", "/missing"],
                            "/missing: no annotations for split 'val'", DatasetError),
    "malformed annotations": (lambda b: ["train", "--data", str(b["data"]), "--out", str(b["out"])],
                              f"{os.path.join('shapes', 'train', 'instances.json')}: not valid JSON", DatasetError),
}
MORE_CASES = {
    "not a checkpoint": (lambda b: ["eval", "--checkpoint", str(b["junk"])],
                         "junk.pt: not a readable checkpoint", CheckpointError),
    "checkpoint of another model": (lambda b: ["eval", "--checkpoint", str(b["ckpt"]), "--model", "rtdetr_tiny"],
                                    "a 'detr_tiny' checkpoint (DETR) cannot be loaded as 'rtdetr_tiny'",
                                    CheckpointError),
    "checkpoint of another config": (lambda b: ["eval", "--checkpoint", str(b["ckpt"]), "--model", "detr_r50"],
                                     "checkpoint config does not match the model: backbone.", CheckpointError),
    "unknown override": (lambda b: ["train", "--model-overrides", '{"num_querys": 5}'],
                         "detr_tiny: unknown field 'num_querys'", ConfigError),
    "overrides not JSON": (lambda b: ["train", "--model-overrides", "{num_queries: 5}"],
                           "--model-overrides: not valid JSON", InputError),
}


def cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tutorial", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def assert_one_line(stderr: str, names: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and names in lines[0], stderr


@pytest.mark.parametrize("case", CASES)
def test_cli_error_is_one_line(case, bad):
    args, names, _ = CASES[case]
    run = cli(args(bad))
    assert run.returncode == 2, run.stderr
    assert_one_line(run.stderr, names)


def test_cli_debug_shows_the_traceback(bad):
    run = cli(["--debug", *CASES["malformed annotations"][0](bad)])
    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr and "DatasetError" in run.stderr, run.stderr


@pytest.mark.parametrize("case", {**CASES, **MORE_CASES})
def test_main_error_and_debug(case, bad, capsys):
    """In-process, every case: status 2 and one line; `--debug` (after the command too) re-raises."""
    args, names, error = {**CASES, **MORE_CASES}[case]
    with pytest.raises(SystemExit) as exit_info:
        main(args(bad))
    assert exit_info.value.code == 2
    assert_one_line(capsys.readouterr().err, names)
    with pytest.raises(error, match=re.escape(names)):
        main([*args(bad), "--debug"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only bad input is shortened: an unexpected exception propagates as it is."""
    import tutorial.__main__ as cli_module

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_module, "cmd_exercises", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["exercises"])
