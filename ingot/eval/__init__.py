"""Evaluating what an engine computes: perplexity of a text (perplexity.py), the reference the
same numbers come from in transformers (reference.py), and lm-evaluation-harness task
definitions to run against `ingot serve` (lm_eval_tasks/)."""
