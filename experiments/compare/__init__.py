"""The objective x parameterisation x schedule comparison (CLI: experiments/compare_objectives.py).

grid.py    which cells exist: enumeration, names, the per-cell config keys, --override parsing
runner.py  how a cell runs: its `python -m vdm.main` stages as processes on device slots,
           resume markers (stages.json, DONE.json), the Fréchet-distance stage, its result row
report.py  the result folder: results.csv, results.md, curves.csv, header.json, figures/
"""
