"""The notebooks' figures (matplotlib) and interactive views (ipywidgets). Computation lives elsewhere:
these files draw what `tutorial.inspect` and `tutorial.figure_metrics` compute.

Figures, by notebook concept: `common.py` (colours, class names, AP text, colourbars; the
conventions of all of them), `boxes.py` (images with boxes), `attention.py` (maps over the image),
`data.py` (00), `matching.py` (01), `detr.py` (02), `deformable.py` (03), `anchors.py` (04),
`denoising.py` (05, and DINO's in 06), `rt_detr.py` (06), `ssm.py` and `ss2d.py` (07).
Views: `views.py` (the base `View`, notebooks 00-01), then `views_detr.py`, `views_deformable.py`,
`views_anchors.py`, `views_denoising.py`, `views_rt_detr.py`, `views_ssm.py`.
"""
