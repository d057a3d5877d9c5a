"""The analysis layer: measures on saved kernels (distances, velocities,
settling, alignment), their figures, and NTK feature images.

May import: `ntk`, `store`, `utils`, and the core modules `data`, `models`,
`attacks`. Not `training`, `sweeper` or `cli`.
"""
