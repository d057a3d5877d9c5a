"""The sweep layer: the grid's config schema, its cells and cost estimate,
the local and SLURM runners, and the reproduction report (sweep.py).

May import: every lower layer (`analysis`, `training`, `ntk`, `store`,
the core modules, `utils`) and `cli`. Nothing imports it but the entry
scripts `sweep.py` and `report.py`.
"""
