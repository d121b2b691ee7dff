"""Runs and their files: the run configuration, checkpoints, output folders, locks, atomic writes."""
