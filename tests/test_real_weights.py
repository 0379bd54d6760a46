"""`tutorial.real_weights`: finding the learner's weights and photos, the instructions printed when
they are missing, the photo data set the runners read, and (slow) the "With the official weights"
cells of notebook 02 run on a random-weight `detr_r50` saved in our checkpoint format."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from tutorial.viz.common import class_name
from tutorial import real_weights
from tutorial.data.class_names import COCO_CLASSES
from tutorial.data.dataset import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parent.parent


def photo(path: Path, h: int = 480, w: int = 640, seed: int = 0) -> Path:
    """A random h×w JPEG at `path`."""
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)  # (h, w, 3)
    Image.fromarray(pixels).save(path)
    return path


def section_cells(notebook: str, prefix: str) -> list[str]:
    """The sources of the code cells of `notebook` whose id starts with `prefix`."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and c["id"].startswith(prefix)]


# --- finding the files ------------------------------------------------------------------------


def test_nothing_without_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(real_weights.ENV, raising=False)
    assert real_weights.find_weights("detr_r50") is None
    assert real_weights.real_images() == []
    assert real_weights.find_weights("detr_r50", tmp_path / "missing") is None
    assert real_weights.find_weights("detr_r50", tmp_path) is None  # empty folder


def test_finds_official_file_from_env(monkeypatch, tmp_path):
    (tmp_path / "detr-r50-e632da11.pth").write_bytes(b"x")
    monkeypatch.setenv(real_weights.ENV, str(tmp_path))
    assert real_weights.find_weights("detr_r50") == (tmp_path / "detr-r50-e632da11.pth", "official")


def test_finds_nested_official_layout(tmp_path):
    path = tmp_path / "DAB_DETR" / "R50" / "checkpoint.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert real_weights.find_weights("dab_detr_r50", tmp_path) == (path, "official")


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_finds_hugging_face_folder(tmp_path, name):
    hub = tmp_path / "detr-resnet-50"  # huggingface-cli download facebook/detr-resnet-50 --local-dir <that>
    hub.mkdir()
    (hub / "config.json").write_text("{}")
    assert real_weights.find_weights("detr_r50", tmp_path) is None  # a folder without weights is not enough
    (hub / name).write_bytes(b"x")
    assert real_weights.find_weights("detr_r50", tmp_path) == (hub, "transformers")
    assert real_weights.find_weights("deformable_detr_r50", tmp_path) is None  # another preset's folder


def test_ours_first_then_official_then_hub(tmp_path):
    (tmp_path / "detr-resnet-50").mkdir()
    (tmp_path / "detr-resnet-50" / "model.safetensors").write_bytes(b"x")
    assert real_weights.find_weights("detr_r50", tmp_path)[1] == "transformers"
    (tmp_path / "detr-r50-e632da11.pth").write_bytes(b"x")
    assert real_weights.find_weights("detr_r50", tmp_path)[1] == "official"
    (tmp_path / "detr_r50.pt").write_bytes(b"x")
    assert real_weights.find_weights("detr_r50", tmp_path) == (tmp_path / "detr_r50.pt", "ours")


def test_every_notebook_preset_is_known_with_a_hub_repo():
    presets = {"detr_r50", "deformable_detr_r50", "deformable_detr_r50_refine", "deformable_detr_r50_two_stage",
               "conditional_detr_r50", "dab_detr_r50"}
    assert presets <= set(real_weights.KNOWN)
    hubs = {p: real_weights.KNOWN[p].hub for p in presets}
    assert hubs["detr_r50"] == "facebook/detr-resnet-50"
    assert hubs["deformable_detr_r50"] == "SenseTime/deformable-detr"
    assert hubs["conditional_detr_r50"] == "microsoft/conditional-detr-resnet-50"
    assert hubs["dab_detr_r50"] == "IDEA-Research/dab-detr-resnet-50"


def test_hash_prefix(tmp_path):
    data = b"some weights"
    prefix = hashlib.sha256(data).hexdigest()[:8]
    good, bad, plain = tmp_path / f"w-{prefix}.pth", tmp_path / "w-00000000.pth", tmp_path / "checkpoint.pth"
    for path in (good, bad, plain):
        path.write_bytes(data)
    assert real_weights.hash_prefix_ok(good) is True
    assert real_weights.hash_prefix_ok(bad) is False
    assert real_weights.hash_prefix_ok(plain) is None


# --- what is printed when something is missing ------------------------------------------------


def test_instructions_name_url_file_hub_and_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(real_weights.ENV, raising=False)
    text = real_weights.instructions("detr_r50")
    assert "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth" in text
    assert "huggingface-cli download facebook/detr-resnet-50 --local-dir" in text
    assert "TUTORIAL_WEIGHTS" in text and "is not set" in text
    assert "python -m tutorial convert --model detr_r50" in text
    assert str(tmp_path / "detr-r50-e632da11.pth") in real_weights.instructions("detr_r50", tmp_path)
    for preset, known in real_weights.KNOWN.items():
        text = real_weights.instructions(preset)
        assert known.url in text and known.hub in text and known.official in text


def test_setup_without_weights_or_photos(monkeypatch, tmp_path):
    monkeypatch.delenv(real_weights.ENV, raising=False)
    real, message = real_weights.setup(("dab_detr_r50", "conditional_detr_r50"))
    assert real is None and "Skipping" in message
    assert "IDEA-Research/dab-detr-resnet-50" in message and "microsoft/conditional-detr-resnet-50" in message
    (tmp_path / "detr_r50.pt").write_bytes(b"x")
    real, message = real_weights.setup("detr_r50", tmp_path)
    assert real is None and "no *.jpg" in message  # weights but no photo: said, and nothing loaded
    photo(tmp_path / "a.jpg", 8, 8)
    real, message = real_weights.setup("detr_r50", tmp_path)
    assert real is None and "detr_r50.pt could not be loaded" in message and "Skipping" in message  # a bad file


def test_notebook_sections_skip_cleanly_without_the_variable(monkeypatch, capsys):
    """What `tests/test_notebooks.py` runs: each section's cells, without TUTORIAL_WEIGHTS."""
    monkeypatch.delenv(real_weights.ENV, raising=False)
    for notebook, prefix in (("02_detr.ipynb", "02-real"), ("03_deformable_detr.ipynb", "03-real"),
                             ("04_anchor_queries.ipynb", "04-real")):
        cells = section_cells(notebook, prefix)
        assert len(cells) >= 2, notebook
        namespace = {"display": print}
        for source in cells:
            exec(compile(source, f"{notebook}:{prefix}", "exec"), namespace)
        assert namespace["real"] is None
        assert "Skipping this section" in capsys.readouterr().out


# --- photos as a data set ---------------------------------------------------------------------


def test_real_images_lists_photos_only(tmp_path):
    for name in ("b.png", "a.JPG", "c.jpeg"):
        photo(tmp_path / name, 8, 8)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    photo(tmp_path / "sub" / "d.jpg", 8, 8)
    assert [p.name for p in real_weights.real_images(tmp_path)] == ["a.JPG", "b.png", "c.jpeg"]


def test_dataset_is_detr_val_transform(tmp_path):
    path = photo(tmp_path / "a.jpg")
    image, target = real_weights.RealImages([path])[0]
    assert image.shape == (3, 800, 1066)  # shorter side 800, 640 * 800 / 480 = 1066
    assert target["size"].tolist() == [800, 1066] and target["orig_size"].tolist() == [480, 640]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["image_id"] == 0
    steps = [v2.ToImage(), v2.Resize(800, max_size=1333), v2.ToDtype(torch.float32, scale=True),
             v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]  # DETR's val transform, written out
    expected = v2.Compose(steps)(Image.open(path).convert("RGB"))  # (3, 800, 1066)
    torch.testing.assert_close(image, expected.as_subclass(torch.Tensor))
    small, t = real_weights.RealImages([path], resize=(320, 480))[0]
    assert small.shape == (3, 320, 426) and t["size"].tolist() == [320, 426]


def test_runner_reads_the_dataset(tmp_path):
    from tutorial import build_model
    from tutorial.inspect import ModelRunner

    torch.manual_seed(0)
    model = build_model("detr_tiny")
    images = real_weights.RealImages([photo(tmp_path / "a.jpg", 64, 96)], resize=None)
    r = ModelRunner(model, images)(0)
    hf, wf = r["feature_size"]
    assert r["size"] == (64, 96) and r["boxes"].shape == (model.cfg.num_queries, 4)
    assert r["encoder_attention"][-1].shape[-1] == hf * wf


def test_views_name_classes_from_the_model(tmp_path):
    """A 91-class model's views name its predictions with COCO's names, a shapes model's with the shapes'."""
    from tutorial import build_model
    from tutorial.viz.views_detr import DecoderAttentionView

    torch.manual_seed(0)
    model = build_model("detr_tiny", num_classes=91)
    images = real_weights.RealImages([photo(tmp_path / "a.jpg", 64, 96)], resize=None)
    view = DecoderAttentionView(model, images, threshold=2.0)
    labels = view.runner(0)["labels"]
    for (text, q) in view.controls["query"].options:
        assert text.startswith(f"q{q}: ")
        label = int(labels[q])
        name = COCO_CLASSES[label] if COCO_CLASSES[label] != "N/A" else f"class {label}"
        assert text.split(": ", 1)[1].rsplit(" ", 1)[0] == name
    view.controls["layer"].value = 0  # a control change redraws with COCO's names too
    first_name = view.controls["query"].options[0][0].split(": ", 1)[1].rsplit(" ", 1)[0]
    assert f"({first_name} " in view.figure.axes[1].get_title()
    from tutorial.data.shapes import CATEGORIES
    assert class_name(1) == CATEGORIES[0] and class_name(1, COCO_CLASSES) == "person"


# --- the notebook section, run for real -------------------------------------------------------


@pytest.mark.slow
def test_detr_section_runs_on_saved_detr_r50(monkeypatch, tmp_path):
    """Notebook 02's "With the official weights" cells, on a random-weight detr_r50 in our format
    (`<folder>/detr_r50.pt`) and a 480×640 JPEG, photos resized to (320, 480) to stay fast."""
    from tutorial import build_model
    from tutorial.training.checkpoint import save_atomic
    from tutorial.models import model_config

    torch.manual_seed(0)
    cfg = model_config("detr_r50")
    model = build_model("detr_r50")
    save_atomic({"preset": "detr_r50", "config": dataclasses.asdict(cfg), "model": model.state_dict()},
                tmp_path / "detr_r50.pt")
    photo(tmp_path / "street.jpg")
    monkeypatch.setenv(real_weights.ENV, str(tmp_path))
    monkeypatch.setattr(real_weights, "VAL_RESIZE", (320, 480))
    namespace = {"display": lambda *objects: None}
    for source in section_cells("02_detr.ipynb", "02-real"):
        exec(compile(source, "02_detr.ipynb:02-real", "exec"), namespace)
    real = namespace["real"]
    assert real is not None and real.found["detr_r50"] == (tmp_path / "detr_r50.pt", "ours")
    r = namespace["real_runner"](0)
    hf, wf = r["feature_size"]
    assert r["size"] == (320, 426) and (hf, wf) == (10, 14)  # stride 32
    assert namespace["real_encoder"].attention_map.shape == (hf, wf)
    assert namespace["real_decoder"].attention_map.shape == (hf, wf)
    torch.testing.assert_close(real.models["detr_r50"].state_dict()["class_embed.weight"],
                               model.state_dict()["class_embed.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("notebook, presets, view", [
    ("03_deformable_detr.ipynb", ("deformable_detr_r50_refine",), "real_sampling"),
    ("04_anchor_queries.ipynb", ("dab_detr_r50", "conditional_detr_r50"), "real_view"),
], ids=["03", "04"])
def test_other_sections_run_on_saved_r50(monkeypatch, tmp_path, notebook, presets, view):
    """Notebooks 03 and 04's sections, the same way: random-weight R50 presets in our format."""
    from tutorial import build_model
    from tutorial.training.checkpoint import save_atomic
    from tutorial.models import model_config

    torch.manual_seed(0)
    for preset in presets:
        state = build_model(preset).state_dict()
        save_atomic({"preset": preset, "config": dataclasses.asdict(model_config(preset)), "model": state},
                    tmp_path / f"{preset}.pt")
    photo(tmp_path / "street.jpg")
    monkeypatch.setenv(real_weights.ENV, str(tmp_path))
    monkeypatch.setattr(real_weights, "VAL_RESIZE", (320, 480))
    namespace = {"display": lambda *objects: None}
    prefix = notebook[:2] + "-real"
    for source in section_cells(notebook, prefix):
        exec(compile(source, f"{notebook}:{prefix}", "exec"), namespace)
    assert set(namespace["real"].models) == set(presets)  # 03 takes the first found, 04 every one
    assert namespace[view].figure.axes  # drawn
