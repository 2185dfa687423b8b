"""Experiments: grids of data sets × models × seeds, and the paper's tables from their runs."""
