"""Structured output: constraints on what a request may generate (JSON schema, regex, choice,
EBNF grammar), enforced by masking the logits with xgrammar; and OpenAI tool calling on top."""

from ingot.structured.spec import StructuredOutput

__all__ = ["StructuredOutput"]
