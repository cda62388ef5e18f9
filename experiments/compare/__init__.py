"""The objective x parameterisation x schedule comparison (CLI: experiments/compare_objectives.py).

grid.py       which cells exist: enumeration, names, the per-cell config keys, --override parsing
runner.py     how a cell runs: its `python -m vdm.main` stages as processes on device slots,
              resume markers (stages.json, DONE.json), the Fréchet-distance stage
cell_rows.py  a cell's result row, read from its folder (metrics.jsonl, fd / inception JSON, stages.json)
report.py     the result folder: results.csv, results.md, curves.csv, header.json, figures/
figures.py    the report's figures (heat maps, curves, schedule bars, the sample montage), notebook 02's too
"""
