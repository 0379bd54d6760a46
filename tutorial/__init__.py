"""detr-tutorial: the DETR family of object detectors, built step by step.

Shape glossary, used in every shape comment of the package:

    B  batch                      Q  queries (object slots)       C  model width (channels)
    H, W  feature-map height/width N  tokens (N = H·W, or Σ_l H_l·W_l)
    M  attention heads            L  feature levels (or layers, where said)
    P  sampling points per level  K  classes (+1 for "no object" where softmax is used)
    n  ground-truth boxes in an image
    The state-space files (ssm, parallel_scan, selective_scan, mamba, ss2d) use the Mamba
    paper's letters instead: L sequence length, D channels, N state size (see their glossaries).

Start with `build_model(name)` / `list_models()` (and `load_pretrained(name, path)` for real weights); the notebooks in `notebooks/` walk through
each model in order.
"""
from .models import build_model, list_models  # noqa: F401


def load_pretrained(preset: str, path, source: str | None = None):
    """`preset` with the weights in `path` (ours, official or Hugging Face); see `tutorial.convert`."""
    from .convert import load_pretrained as load  # imported on use: `import tutorial` stays light

    return load(preset, path, source)

__version__ = "0.1.0"
