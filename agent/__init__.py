"""edge-agent: evidence pipeline for law-enforcement recorders and interview rooms."""

__version__ = "0.1.0"
