"""The training layer: the update steps, the two phases of an experiment
(run_exp.py), their evaluation and the files a run writes.

May import: `store`, `utils`, and the core modules `data`, `models`,
`attacks`. Not `ntk`, `analysis`, `sweeper` or `cli`.
"""
