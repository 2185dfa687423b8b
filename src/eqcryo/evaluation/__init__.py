"""Evaluation: pose metrics, map alignment, FSC reports, figures."""
