"""Offline datasets: D4RL's HDF5 layout and Minari, episodes, returns-to-go, normalised scores."""
