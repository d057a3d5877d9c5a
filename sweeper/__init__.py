"""The sweep layer: experiment grids of the entry scripts' commands, how
they run, what they cost, and the reproduction report (sweep.py).

- `schema`: the grid's TOML file, a frozen dataclass per section (keys,
  types, defaults, checks), read by `load_config`;
- `grid`: its cells (the commands, what each needs and writes), their
  state, the output root's layout and its record (sweep.json), and the
  check that a cell's files were made with its flags;
- `estimate`: device hours of the cells (`--estimate`);
- `runners`: running the cells here (`--local`) or on SLURM (`--slurm`);
- `collect`: the cells' files read into tables;
- `report_figures`: the figures; `verdicts`: the verdicts on the paper's
  claims and the masking diagnostics; `robustness_report`: the report's
  section on AutoAttack; `report`: `--aggregate` and the markdown report
  (docs/REPORT.md).

May import: every lower layer (`analysis`, `training`, `ntk`, `store`,
the core modules, `utils`) and `cli`, never an entry script: the scripts'
parsers that the flag check needs come from `sweep.py` (`grid.Parsers`,
cli's), the attacks' names, budget fields and codes from the attack
registry (`attacks`).
Nothing imports it but the entry scripts `sweep.py` and `report.py`.
"""
