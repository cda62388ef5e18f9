"""Experiments on top of the vdm library: the objective grid (experiments.compare), the feature net and its Fréchet distance, benchmarks.

A package so that its modules import each other by name (`from experiments.compare import runner`); the
venv's .pth file puts the repository root on sys.path, so both `python experiments/X.py` and
`python -m experiments.X` find it.
"""
