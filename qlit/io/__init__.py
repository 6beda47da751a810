"""Files qlit reads and writes: configs, run folders, checkpoints, and the checks made before a run."""
