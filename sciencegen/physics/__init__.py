"""Dataset generators: physical models whose trajectories become training data."""
