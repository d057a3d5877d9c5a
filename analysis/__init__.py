"""The analysis layer: measures on saved kernels (distances, velocities,
settling, alignment), their tables and figures, and NTK feature images.

kernel_analysis (the formulas), kernel_inputs (finding and reading kernel
files), tables, outputs (analysis.json, the figures, writing) and
pipeline (analyze_kernels.py's work); kernel_figures (seaborn figures of
the tables); features (feature images), feature_figures (their PNG grid)
and visualize (visualize_ntk_features.py's work). The entry scripts parse
and check their flags and call pipeline.analyse or visualize.visualize.

May import: `ntk`, `store`, `utils`, and the core modules `data`, `models`,
`attacks`. Not `training`, `sweeper` or `cli`.
"""
