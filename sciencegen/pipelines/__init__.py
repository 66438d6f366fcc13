"""Pipelines: plain ``run_x(...)`` functions that the console scripts wrap."""
