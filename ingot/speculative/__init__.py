"""Speculative decoding: proposers suggest draft tokens (base.py, one file per mode), the runner
verifies them (verify.py)."""

from __future__ import annotations


def make_proposer(config):
    """The proposer of an engine's SpeculativeConfig, or None when speculation is off."""
    if not config.enabled:
        return None
    if config.mode == "ngram":
        from ingot.speculative.ngram import NgramProposer

        return NgramProposer(config.max_draft_len, config.ngram_min, config.ngram_max)
    raise AssertionError(f"SpeculativeConfig validated mode {config.mode!r}")
