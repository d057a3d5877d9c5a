"""The NTK layer: per-block Jacobians (jacobians), the block planner
(planner), empirical and cross kernels through one factory
(kernels.ntk_fn), kernel files (kernel_files), calculate_kernel.py's work
(compute) and the neural-tangents compatibility shim (nt_compat).

May import: `store`, `utils`, and the core modules `data`, `models`,
`attacks`. Not `training`, `analysis`, `sweeper`, `cli` or the entry
scripts.
"""
