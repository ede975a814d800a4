"""A SchedulerOutput turned into the flat host lists a forward pass needs (no tensors yet).

The batch is packed and unpadded: request i's new tokens are rows [query_start[i], query_start[i+1]).
A request's inputs are its known tokens at positions [start, end) followed by its draft tokens.
Rows whose logits are needed (`sample_index`) are, per sampling request, its last 1 + len(drafts)
rows: the targets of each draft and of the token after them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ingot.runtime.records import SchedulerOutput


@dataclass
class HostInputs:
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # cache slot of each new token
    query_start: list[int] = field(default_factory=lambda: [0])
    seq_lens: list[int] = field(default_factory=list)  # context length after the step, per request
    sample_index: list[int] = field(default_factory=list)  # rows whose logits are sampled, in request order
    # Prompt scoring (params.prompt_logprobs): rows whose logits score the next prompt token, that
    # token, the top-k asked for, and per request (request, first scored token index, count).
    score_index: list[int] = field(default_factory=list)
    score_targets: list[int] = field(default_factory=list)
    score_top_k: list[int] = field(default_factory=list)
    score_spans: list[tuple] = field(default_factory=list)


def host_inputs(step: SchedulerOutput, tokens_per_block: int) -> HostInputs:
    if _is_plain_decode(step):
        return _decode_inputs(step, tokens_per_block)
    inputs = HostInputs()
    for s in step.scheduled:
        request = s.request
        known_end = s.end - len(s.draft_tokens)
        inputs.input_ids.extend(request.token_ids[s.start:known_end])
        inputs.input_ids.extend(s.draft_tokens)
        inputs.positions.extend(range(s.start, s.end))
        inputs.slots.extend(slot_range(request.block_ids, s.start, s.end, tokens_per_block))
        inputs.query_start.append(inputs.query_start[-1] + s.num_tokens)
        inputs.seq_lens.append(s.end)
        last = inputs.query_start[-1]
        inputs.sample_index.extend(range(last - s.num_sampled, last))
        _add_scored_rows(inputs, s, last - s.num_tokens)
    return inputs


def _is_plain_decode(step: SchedulerOutput) -> bool:
    """Every request computes one known token and samples the next, scoring no prompt position."""
    return all(s.num_tokens == 1 and not s.draft_tokens and s.request.params.prompt_logprobs is None
               and s.request.params.max_tokens > 0 and s.start == s.request.num_tokens - 1 for s in step.scheduled)


def _decode_inputs(step: SchedulerOutput, tokens_per_block: int) -> HostInputs:
    """host_inputs of a plain decode step, one list comprehension per field (a decode step of
    1,024 requests is where the per-request Python cost shows)."""
    scheduled = step.scheduled
    positions = [s.start for s in scheduled]
    return HostInputs(
        input_ids=[s.request.token_ids[s.start] for s in scheduled], positions=positions,
        slots=[s.request.block_ids[p // tokens_per_block] * tokens_per_block + p % tokens_per_block
               for s, p in zip(scheduled, positions)],
        query_start=list(range(len(scheduled) + 1)), seq_lens=[p + 1 for p in positions],
        sample_index=list(range(len(scheduled))))


def _add_scored_rows(inputs: HostInputs, s, first_row: int) -> None:
    positions = s.scored_positions
    if not positions:
        return
    request = s.request
    inputs.score_index.extend(first_row + p - s.start for p in positions)
    inputs.score_targets.extend(request.prompt_token_ids[positions.start + 1:positions.stop + 1])
    inputs.score_top_k.extend([request.params.prompt_logprobs] * len(positions))
    inputs.score_spans.append((request, positions.start + 1, len(positions)))


def slot_range(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of token positions [start, end) of a sequence with this block table."""
    if end - start <= 8:  # decode and verify: a few tokens, plain Python is cheaper than numpy
        return [block_ids[t // block_size] * block_size + t % block_size for t in range(start, end)]
    positions = np.arange(start, end)
    return (np.asarray(block_ids)[positions // block_size] * block_size + positions % block_size).tolist()


def block_table_array(step: SchedulerOutput, width: int, rows: int | None = None, pad_block: int = 0) -> np.ndarray:
    """(rows, width) int32 block tables; entries past a table's end and rows past the step's
    requests hold pad_block (rows >= number of requests)."""
    table = np.full((rows or len(step.scheduled), width), pad_block, dtype=np.int32)
    for i, s in enumerate(step.scheduled):
        table[i, : len(s.request.block_ids)] = s.request.block_ids
    return table
