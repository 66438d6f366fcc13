"""Data preparation and streaming for training: prepared Zarr datasets, statistics, torch loaders."""
