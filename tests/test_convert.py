"""The converter's machinery: every key accounted for, errors that name the key, the file readers,
`load_pretrained`, and `python -m tutorial convert` followed by `predict` on the converted model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tutorial.convert import ConversionError, KeyMap, apply, convert_state_dict, load_pretrained
from tutorial.convert.files import read_state_dict
from tutorial.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
MAP = KeyMap(renames=((r"a\.(.*)", r"x.\1"),), splits=((r"qkv", ("q", "k", "v")),),
             ignore=((r".*num_batches_tracked", "a counter"),))
TARGET = {"x.w": torch.zeros(2, 3), "q": torch.zeros(1, 3), "k": torch.zeros(1, 3), "v": torch.zeros(1, 3)}


def source(**extra):
    return {"a.w": torch.ones(2, 3), "qkv": torch.arange(9.0).reshape(3, 3), "bn.num_batches_tracked": torch.tensor(1),
            **extra}


def test_renames_splits_and_ignores():
    out = apply(MAP, source(), TARGET)
    assert sorted(out) == sorted(TARGET)
    assert out["k"].tolist() == [[3.0, 4.0, 5.0]]  # the middle third of the fused tensor


@pytest.mark.parametrize("change, named", [
    (lambda s: {**s, "b.extra": torch.ones(1)}, "'b.extra'"),          # a key with no rule
    (lambda s: {**s, "a.w": torch.ones(3, 2)}, "(3, 2)"),              # the wrong shape
    (lambda s: {k: v for k, v in s.items() if k != "a.w"}, "'x.w'"),   # a model key left empty
    (lambda s: {**s, "a.u": torch.ones(1)}, "'x.u'"),                  # maps to a key the model lacks
])
def test_every_key_is_accounted_for(change, named):
    with pytest.raises(ConversionError, match=named.replace("(", r"\(").replace(")", r"\)")):
        apply(MAP, change(source()), TARGET)


def test_two_keys_on_one_target_is_an_error():
    twice = KeyMap(renames=((r"a\.(.*)", r"x.\1"), (r"b\.(.*)", r"x.\1")), splits=MAP.splits, ignore=MAP.ignore)
    with pytest.raises(ConversionError, match="both map to 'x.w'"):
        apply(twice, source(**{"b.w": torch.ones(2, 3)}), TARGET)


def test_unsupported_model_and_source_are_named():
    with pytest.raises(InputError, match="'dense_tiny'.*detr_r50"):
        convert_state_dict("dense_tiny", {}, "official")
    with pytest.raises(InputError, match="--from 'timm'"):
        convert_state_dict("detr_r50", {}, "timm")


def test_safetensors_folder_is_read(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    state = {"model.a": torch.randn(3, 4), "model.b": torch.arange(5), "c": torch.randn(2).to(torch.bfloat16)}
    safetensors.save_file(state, str(tmp_path / "model.safetensors"))
    read = read_state_dict(tmp_path)
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)


def test_official_file_with_args_is_read(tmp_path):
    """The official repositories save {"model": ..., "args": argparse.Namespace(...)}."""
    import argparse

    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4), "epoch": 49}, tmp_path / "ckpt.pth")
    assert list(read_state_dict(tmp_path / "ckpt.pth")) == ["w"]


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match="weights.pth: not a readable PyTorch checkpoint"):
        read_state_dict(bad)


@pytest.mark.slow
def test_convert_then_predict_from_the_command_line(tmp_path):
    """A random-weight Hugging Face DETR saved as a file -> `convert` -> `load_pretrained` and `predict`
    (COCO class names come with the 91 classes)."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.DetrForObjectDetection(transformers.DetrConfig(num_labels=91, use_pretrained_backbone=False))
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    run = [sys.executable, "-m", "tutorial"]
    done = subprocess.run(run + ["convert", "--from", "transformers", "--model", "detr_r50", str(tmp_path),
                                 str(tmp_path / "detr_r50.pt")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "530 keys -> 530" in done.stdout and "91 classes" in done.stdout
    model = load_pretrained("detr_r50", tmp_path / "detr_r50.pt")
    assert torch.equal(model.class_embed.weight, hf.class_labels_classifier.weight)
    image = sorted((ROOT / "data/shapes/val/images").glob("*.jpg"))[0]
    done = subprocess.run(run + ["predict", "--checkpoint", str(tmp_path / "detr_r50.pt"), "--image", str(image),
                                 "--threshold", "0", "--out", str(tmp_path / "pred.png")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "pred.json").read_text())
    assert (tmp_path / "pred.png").stat().st_size > 0 and len(results) == 100
    assert {r["category_id"] for r in results} <= set(range(1, 91))
