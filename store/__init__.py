"""The store layer: what the scripts keep on disk and how.

File names and patterns, atomic writes, safe pickles, checkpoints and resume
states, provenance, and the readers of the datasets' own file formats.
Every other layer asks this one for a file's name or layout.

May import: `utils` and third-party packages only.
"""
