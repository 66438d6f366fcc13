"""Hydra configs shipped with the package (config groups in sub-folders)."""
