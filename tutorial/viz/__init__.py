"""The notebooks' figures (matplotlib) and interactive views (ipywidgets). Computation lives elsewhere:
these files draw what `tutorial.inspect` and `tutorial.figure_metrics` compute."""
