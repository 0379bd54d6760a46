"""The learner's real weights and photos: finding them, saying how to get them, and feeding them to
the notebooks' views (the "With the official weights" sections of notebooks 02, 03 and 04).

Nothing here downloads. The learner fetches the files on a machine with internet, puts them in one
folder with a few photos (`*.jpg`, `*.png`), and sets `TUTORIAL_WEIGHTS=/path/to/that/folder`.
For each preset `find_weights` looks in that folder for, in this order,

    <preset>.pt                      our format, written by `python -m tutorial convert`
    the official file (`KNOWN[preset].official`), e.g. detr-r50-e632da11.pth
    the Hugging Face folder (`KNOWN[preset].hub`'s name), e.g. detr-resnet-50/ with model.safetensors

and `load_pretrained` (`tutorial/convert/`) turns a foreign file into our model on the fly.

Photos are transformed as DETR's validation set (`datasets/coco.py` of the official code, and
`tutorial.data.dataset.make_transforms(train=False, resize=(800, 1333))`): shorter side 800 pixels,
longer side at most 1333, ImageNet normalisation. `RealImages` returns the (image, target) pairs
the runners of `tutorial/inspect.py` read (a target with no boxes: a photo has no ground truth).

The models of the papers predict COCO's category ids (K = 91); the views name each model's classes
from its class count (`tutorial.class_names`), so COCO's names appear without anything to set.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision import tv_tensors

from .data.class_names import class_name, class_names
from .convert.files import HF_FILES
from .data.dataset import make_transforms
from .errors import InputError

ENV = "TUTORIAL_WEIGHTS"
VAL_RESIZE = (800, 1333)  # DETR's val transform: shorter side 800, longer side at most 1333
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SKIP = "Skipping this section."
HUB_HASH = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub: "name-<first hex digits of sha256>.ext"


@dataclass(frozen=True)
class Known:
    """Where a preset's published weights are. `official`: the file's path inside the folder;
    `url`: where to get it; `hub`: the Hugging Face repository; `note`: what to know about it."""
    official: str
    url: str
    hub: str
    note: str = ""


KNOWN = {
    "detr_r50": Known(
        "detr-r50-e632da11.pth", "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
        "facebook/detr-resnet-50",
        "facebookresearch/detr README, model zoo row 'DETR R50'; e632da11 starts the file's sha256"),
    "deformable_detr_r50": Known(
        "r50_deformable_detr-checkpoint.pth",
        "https://drive.google.com/file/d/1nDWZWHuRwtwGden77NLM9JoWe-YisJnA/view?usp=sharing",
        "SenseTime/deformable-detr",
        "fundamentalvision/Deformable-DETR README, 'Main Results', row 'Deformable DETR', link 'model'"),
    "deformable_detr_r50_refine": Known(
        "r50_deformable_detr_plus_iterative_bbox_refinement-checkpoint.pth",
        "https://drive.google.com/file/d/1JYKyRYzUH7uo9eVfDaVCiaIGZb5YTCuI/view?usp=sharing",
        "SenseTime/deformable-detr-with-box-refine",
        "Deformable-DETR README, row '+ iterative bounding box refinement', link 'model'"),
    "deformable_detr_r50_two_stage": Known(
        "r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage-checkpoint.pth",
        "https://drive.google.com/file/d/15I03A7hNTpwuLNdfuEmW9_taZMNVssEp/view?usp=sharing",
        "SenseTime/deformable-detr-with-box-refine-two-stage",
        "Deformable-DETR README, row '++ two-stage Deformable DETR', link 'model'"),
    "conditional_detr_r50": Known(
        "ConditionalDETR_r50_epoch50.pth",
        "https://github.com/DeppMeng/ConditionalDETR/releases/download/v1.0/ConditionalDETR_r50_epoch50.pth",
        "microsoft/conditional-detr-resnet-50",
        "the URL in Atten4Vis/ConditionalDETR's hubconf.py; its README's model zoo (row "
        "'Conditional DETR-R50') links a OneDrive download"),
    "dab_detr_r50": Known(
        "DAB_DETR/R50/checkpoint.pth", "https://github.com/IDEA-Research/DAB-DETR#model-zoo",
        "IDEA-Research/dab-detr-resnet-50",
        "the README's model zoo links a shared folder (Google Drive / Tsinghua Cloud); keep its "
        "layout DAB_DETR/R50/checkpoint.pth"),
}


# --- finding the files ------------------------------------------------------------------------


def weights_folder(folder: str | os.PathLike | None = None) -> Path | None:
    """`folder`, else `$TUTORIAL_WEIGHTS`, as a Path; None when neither is given."""
    folder = folder if folder is not None else os.environ.get(ENV) or None
    return None if folder is None else Path(folder).expanduser()


def hub_folder(folder: Path, preset: str) -> Path:
    """Where `huggingface-cli download <repo> --local-dir` should put `preset`'s hub files."""
    return folder / KNOWN[preset].hub.split("/")[-1]


def find_weights(preset: str, folder: str | os.PathLike | None = None) -> tuple[Path, str] | None:
    """(path, source) of `preset`'s weights in `folder` (default `$TUTORIAL_WEIGHTS`), source being
    "ours", "official" or "transformers" (the order they are looked for); None if none is there."""
    root = weights_folder(folder)
    if root is None or not root.is_dir() or preset not in KNOWN:
        return None
    hub = hub_folder(root, preset)
    candidates = ((root / f"{preset}.pt", "ours"), (root / KNOWN[preset].official, "official"))
    for path, source in candidates:
        if path.is_file():
            return path, source
    if any((hub / name).is_file() for name in HF_FILES):
        return hub, "transformers"
    return None


def hash_prefix_ok(path: str | os.PathLike) -> bool | None:
    """For a torch.hub-style name ("detr-r50-e632da11.pth"): does the file's sha256 start with the
    hex digits in its name? None when the name carries none."""
    match = HUB_HASH.search(Path(path).name)
    if match is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(match.group(1))


def instructions(preset: str, folder: str | os.PathLike | None = None) -> str:
    """What to do, on a machine with internet, to give `preset` its official weights."""
    k, where = KNOWN[preset], weights_folder(folder) or Path("<folder>")
    return "\n".join([
        f"No weights for {preset} in {where}" + ("" if weights_folder(folder) else f" (${ENV} is not set)") + ".",
        "On a machine with internet, get ONE of:",
        f"  - the official checkpoint {k.url}",
        f"    saved as {where / k.official}",
        f"    ({k.note})",
        f"  - the Hugging Face folder: huggingface-cli download {k.hub} --local-dir {hub_folder(where, preset)}",
        f"    (https://huggingface.co/{k.hub}; each LFS file's page shows its sha256)",
        f"Optionally convert it once: python -m tutorial convert --model {preset} <that file or folder> "
        f"{where / (preset + '.pt')}",
        f"Add a photo or two (*.jpg, *.png) to the folder, copy it here and start Jupyter with {ENV}=<folder>.",
    ])


def real_images(folder: str | os.PathLike | None = None) -> list[Path]:
    """The photos (`IMAGE_SUFFIXES`, any case) directly inside `folder` (default `$TUTORIAL_WEIGHTS`), sorted."""
    root = weights_folder(folder)
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# --- photos as a data set ---------------------------------------------------------------------


class RealImages(torch.utils.data.Dataset):
    """Photos as (image (3, H, W) normalised, target) pairs, transformed as DETR's val set
    (`tutorial.data.dataset.make_transforms(False, resize)`). The target is `DetectionDataset`'s without
    ground truth: {"boxes" (0, 4), "labels" (0,), "image_id", "orig_size" (h, w), "size" (h, w)},
    which is all the runners of `tutorial/inspect.py` read."""

    def __init__(self, paths: list[str | os.PathLike], resize: tuple[int, int] | None = VAL_RESIZE):
        self.paths = [Path(p) for p in paths]
        self.transforms = make_transforms(train=False, resize=resize)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> tuple[Tensor, dict]:
        image = Image.open(self.paths[idx]).convert("RGB")
        w, h = image.size
        empty = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)),
                 "labels": torch.zeros(0, dtype=torch.int64)}  # the v2 transforms expect boxes to move
        image, _ = self.transforms(image, empty)  # (3, H', W')
        return image.as_subclass(Tensor), {
            "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": idx,
            "orig_size": torch.tensor([h, w]), "size": torch.tensor(image.shape[-2:])}


# --- one call for a notebook section ----------------------------------------------------------


@dataclass
class Real:
    """What a notebook section needs: `models` {preset: model in eval mode}, `images` (`RealImages`),
    `found` {preset: (path, source)}."""
    models: dict[str, nn.Module]
    images: RealImages
    found: dict[str, tuple[Path, str]] = field(default_factory=dict)


def describe(preset: str, path: Path, source: str) -> str:
    """One line: which file `preset` is loaded from, with its hash check where the name allows one."""
    ok = hash_prefix_ok(path) if path.is_file() else None
    check = {None: "", True: "; sha256 prefix in its name: ok", False: "; sha256 does NOT match its name"}[ok]
    return f"{preset}: {source} weights from {path}{check}"


def load(found: dict[str, tuple[Path, str]]) -> tuple[dict[str, nn.Module], list[str]]:
    """({preset: model} for the files that load, one line per file: where from, or why it failed
    (`InputError`: no converter yet, a file that does not fit, ...))."""
    from . import load_pretrained  # the converters import on use

    models, lines = {}, []
    for preset, (path, source) in found.items():
        try:
            models[preset] = load_pretrained(preset, path, None if source == "ours" else source)
            lines.append(describe(preset, path, source))
        except InputError as e:
            lines.append(f"{preset}: {path} could not be loaded: {e}")
    return models, lines


def setup(presets: str | tuple[str, ...], folder: str | os.PathLike | None = None,
          resize: tuple[int, int] | None = VAL_RESIZE, every: bool = False) -> tuple[Real | None, str]:
    """(Real, message) for the first of `presets` whose weights are in `folder` (default
    `$TUTORIAL_WEIGHTS`; with `every`, all of them), with the folder's photos; (None, how to get
    what is missing, or why it did not load) when no model or no photo is there. Nothing is downloaded."""
    presets = (presets,) if isinstance(presets, str) else tuple(presets)
    found = {p: f for p in presets if (f := find_weights(p, folder)) is not None}
    found = found if every else dict(list(found.items())[:1])
    photos = real_images(folder)
    if not found:
        return None, "\n\n".join(instructions(p, folder) for p in presets) + "\n" + SKIP
    if not photos:
        return None, f"Weights found, but no *.jpg / *.png in {weights_folder(folder)}: add a photo. {SKIP}"
    models, lines = load(found)
    if not models:
        return None, "\n".join(lines + [SKIP])
    lines.append(f"{len(photos)} photo(s): {', '.join(p.name for p in photos)}")
    return Real(models, RealImages(photos, resize), found), "\n".join(lines)
