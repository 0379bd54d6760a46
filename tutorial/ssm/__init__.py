"""State-space models: the linear SSM and its discretisation, the parallel and selective scans, Mamba,
and VMamba's 2-D cross-scan (SS2D). Their glossary uses the Mamba paper's letters (see `ssm.ssm`)."""
