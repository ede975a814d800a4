"""lm-evaluation-harness task definitions for ingot (ingot_mc, ingot_gen) with local data.

This folder is passed to `lm_eval --include_path`; see README.md here.
"""
