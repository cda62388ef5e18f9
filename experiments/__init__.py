"""Experiments on top of the vdm library: the objective grid (experiments.compare), the feature net and its Fréchet distance, benchmarks.

A package so that its modules import each other by name (`from experiments.compare import runner`). Run
its scripts from the repository root as `python -m experiments.X` (the root is then on sys.path); in the
venv `make` builds (an editable install of this flat checkout) `python experiments/X.py` finds it too.
"""
