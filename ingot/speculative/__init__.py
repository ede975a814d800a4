"""Speculative decoding: proposers suggest draft tokens, the runner verifies them (verify.py)."""
