"""Training: the ab initio loop, checkpoints, resume."""
