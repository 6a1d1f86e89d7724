"""Per-pixel statistics over stacks of observations: numpy and numba only, no I/O."""
