"""Bundled data: the demo structure (PDB 5NRL heavy atoms, public domain)."""
