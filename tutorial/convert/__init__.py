"""Checkpoints of the official repositories and of Hugging Face transformers, as our presets.

    python -m tutorial convert --from official --model detr_r50 detr-r50-e632da11.pth detr_r50.pt
    python -m tutorial convert --from transformers --model detr_r50 hf-detr-resnet-50/ detr_r50.pt
    model = tutorial.load_pretrained("detr_r50", "detr_r50.pt")

`keymap.py` holds the renaming machinery and its checks, `files.py` the readers, `pretrained.py`
the entry points, and one file per family its rules, written from the key names the other
codebases publish.
"""
from .keymap import ConversionError, KeyMap, apply  # noqa: F401
from .pretrained import MAPS, SOURCES, convert, convert_state_dict, keymap_for, load_pretrained  # noqa: F401
