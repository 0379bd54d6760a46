"""`python -m tutorial predict`: PNG and COCO results JSON for one image or a folder, any PIL mode,
and one-line errors for bad input."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from PIL import Image

from tutorial.training.checkpoint import save_atomic, shippable
from tutorial.data.class_names import COCO_CLASSES, class_name, class_names
from tutorial.models import build_model
from tutorial.training.predict import ImageError, PredictConfig, predict
from tutorial.data.shapes import ShapesConfig, make_image

from .conftest import ROOT

CKPT = str(ROOT / "data/checkpoints/detr_tiny.pt")


@pytest.fixture(scope="module")
def shapes_png(tmp_path_factory):
    """A shapes val image written as PNG, and its size (w, h)."""
    img, _ = make_image(ShapesConfig(), "val", 3)  # (H, W, 3) uint8
    path = tmp_path_factory.mktemp("img") / "shape.png"
    Image.fromarray(img).save(path)
    return path


def check_results(results: list[dict], json_path, size, threshold: float, image_ids=(1,)) -> None:
    """The JSON holds `results`; every box lies in the image and every score is ≥ threshold."""
    assert json.loads(json_path.read_text()) == results
    w, h = size
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert r["image_id"] in image_ids and r["score"] >= threshold
        x, y, bw, bh = r["bbox"]
        assert -1e-3 <= x and -1e-3 <= y and bw >= 0 and bh >= 0
        assert x + bw <= w + 1e-3 and y + bh <= h + 1e-3


def test_one_image_writes_png_and_json(shapes_png, tmp_path):
    out = tmp_path / "pred.png"
    results = predict(PredictConfig(CKPT, str(shapes_png), str(out), threshold=0.3))
    size = Image.open(shapes_png).size
    assert Image.open(out).size == size
    check_results(results, tmp_path / "pred.json", size, 0.3)


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_other_modes(shapes_png, tmp_path, mode):
    path = tmp_path / f"in_{mode}.png"
    Image.open(shapes_png).convert(mode).save(path)
    out = tmp_path / "pred.png"
    results = predict(PredictConfig(CKPT, str(path), str(out), threshold=0.0, json=str(tmp_path / "r.json")))
    assert Image.open(out).mode == "RGB" and len(results) > 0
    check_results(results, tmp_path / "r.json", Image.open(shapes_png).size, 0.0)


def test_folder(shapes_png, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.open(shapes_png).save(images / "a.png")
    Image.open(shapes_png).convert("RGB").save(images / "b.jpg")
    (images / "notes.txt").write_text("not an image, and not picked up")
    out = tmp_path / "out"
    results = predict(PredictConfig(CKPT, str(images), str(out), threshold=0.0))
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    assert {r["image_id"] for r in results} == {1, 2}
    check_results(results, out / "predictions.json", Image.open(shapes_png).size, 0.0, image_ids=(1, 2))


def test_random_model_checkpoint(shapes_png, tmp_path):
    """A randomly initialised model saved as train + ship save it (fields and float16) predicts too."""
    model = build_model("detr_tiny")
    ckpt = tmp_path / "random.pt"
    save_atomic(shippable({"preset": "detr_tiny", "config": dataclasses.asdict(model.cfg),
                           "model": model.state_dict()}), ckpt)
    results = predict(PredictConfig(str(ckpt), str(shapes_png), str(tmp_path / "p.png"), threshold=0.0))
    assert len(results) == model.cfg.num_queries
    check_results(results, tmp_path / "p.json", Image.open(shapes_png).size, 0.0)


def test_bad_inputs(tmp_path):
    with pytest.raises(ImageError, match="folder has no images"):
        predict(PredictConfig(CKPT, str(tmp_path), str(tmp_path / "o")))
    with pytest.raises(ImageError, match="does not exist"):
        predict(PredictConfig(CKPT, str(tmp_path / "missing.png")))
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_text("hello")
    fake = tmp_path / "fake.png"
    Image.new("RGB", (8, 8)).save(fake)
    from tutorial.training.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        predict(PredictConfig(str(not_ckpt), str(fake), str(tmp_path / "o.png")))
    with pytest.raises(CheckpointError, match="does not exist"):
        predict(PredictConfig(str(tmp_path / "none.pt"), str(fake), str(tmp_path / "o.png")))


def test_cli_text_file_named_png(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("this is text")
    proc = subprocess.run([sys.executable, "-m", "tutorial", "predict", "--checkpoint", CKPT, "--image", str(bad),
                           "--out", str(tmp_path / "o.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]


def test_class_names():
    assert class_name(3, class_names(6)) == "triangle"
    assert class_name(1, class_names(91)) == "person" and class_name(90, class_names(91)) == "toothbrush"
    assert class_name(12, class_names(91)) == "class 12"  # an id COCO skips
    assert class_name(0, class_names(80)) == "person" and len(COCO_CLASSES) == 91
    assert class_name(7, class_names(6)) == "class 7" and class_name(3, class_names(20)) == "class 3"
