"""The training layer: the update steps and loops of both phases (`train`),
the run of `run_exp.py` with its settings, resuming and files
(`experiment`), clean and PGD evaluation with its result and example files
(`evaluation`), and the checkpoint evaluation of `eval_and_make_adv.py`
(`adv_eval`). The entry scripts keep only their flags and a `main`.

Every file name comes from `store.layout`; the resume file is read and
written by `store.resume`, checkpoints by `store.checkpoints`.

May import: `store`, `utils`, and the core modules `data`, `models`,
`attacks`. Not `ntk`, `analysis`, `sweeper` or `cli`.
"""
