"""Speculative decoding: proposers suggest draft tokens (base.py, one file per mode), the runner
verifies them (verify.py)."""

from __future__ import annotations


def make_proposer(config, engine_dir, draft_engine=None, device=None, target_spec=None):
    """The proposer of an engine's SpeculativeConfig, or None when speculation is off.
    draft_target takes its draft engine at run time (draft_engine); other modes refuse one."""
    from ingot.errors import ConfigError

    if draft_engine is not None and config.mode != "draft_target":
        raise ConfigError(f"--draft-engine {draft_engine} given, but {engine_dir} was built with speculative mode "
                          f"{config.mode}: a draft model needs the target built with --speculative draft_target "
                          "(its verify steps are part of the engine's envelope)")
    if not config.enabled:
        return None
    if config.mode == "ngram":
        from ingot.speculative.ngram import NgramProposer

        return NgramProposer(config.max_draft_len, config.ngram_min, config.ngram_max)
    if config.mode == "draft_target":
        if draft_engine is None:
            raise ConfigError(f"{engine_dir} was built with --speculative draft_target: pass --draft-engine DIR, "
                              "an engine of a smaller model with the same tokenizer")
        from ingot.speculative.draft_model import DraftModelProposer

        proposer = DraftModelProposer(config.max_draft_len, draft_engine, device)
        try:
            proposer.check_target(target_spec, engine_dir)
        except BaseException:
            proposer.shutdown()
            raise
        return proposer
    raise AssertionError(f"SpeculativeConfig validated mode {config.mode!r}")
