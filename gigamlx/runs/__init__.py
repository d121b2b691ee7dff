"""Runs and their files: run configuration, checkpoints, output folders, locks, atomic writes."""
