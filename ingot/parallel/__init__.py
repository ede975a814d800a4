"""Parallel layouts (mapping.py) and the collectives layers use (comm.py)."""
