"""The building blocks every detector shares: box operations, attention, positional encodings, MLPs,
multi-scale deformable attention and its compiled kernels (`kernels`, `cuda/`)."""
