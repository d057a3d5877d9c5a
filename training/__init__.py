"""The training layer: the update steps and loops of both phases (`train`),
the run of `run_exp.py` with its settings, resuming and files
(`experiment`), clean and robust evaluation with its result and example
files (`evaluation`; the attacks are `attacks`'), and the checkpoint
evaluation of `eval_and_make_adv.py` (`adv_eval`). Each takes typed
settings (`experiment.RunSettings`, `adv_eval.AdvEvalSettings`), which
the entry scripts make from their flags (cli.run_exp,
cli.eval_and_make_adv).

Every file name comes from `store.layout`; the resume file is read and
written by `store.resume`, checkpoints by `store.checkpoints`.

May import: `store`, `utils`, and the core modules `data`, `models`,
`attacks`. Not `ntk`, `analysis`, `sweeper` or `cli`.
"""
