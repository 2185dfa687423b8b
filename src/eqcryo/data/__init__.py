"""Data: file formats (MRC, STAR, cryoSPARC, cryoDRGN), the particle table, simulation."""

from .errors import InputError
from .io import load_particles, save_metadata
from .particles import CTF_FIELDS, ParticleTable

__all__ = ["InputError", "load_particles", "save_metadata", "CTF_FIELDS", "ParticleTable"]
