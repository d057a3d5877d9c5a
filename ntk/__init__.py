"""The NTK layer: Jacobians, empirical kernels, their block planner, kernel
files and the neural-tangents compatibility shim.

May import: `store`, `utils`, and the core modules `data`, `models`,
`attacks`. Not `training`, `analysis`, `sweeper` or `cli`.
"""
