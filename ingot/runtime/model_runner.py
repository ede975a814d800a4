"""ModelRunner: turns a scheduled batch into one packed forward pass and returns logits.

The runner owns the model and the KV pool (device memory); the scheduler and the block
allocator never touch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ingot.attention import AttentionMetadata
from ingot.runtime.cuda_graphs import DecodeGraphs
from ingot.runtime.kv_cache import KVCachePool
from ingot.runtime.request import Request


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # (num_tokens,) int64, device
    positions: torch.Tensor  # (num_tokens,) int64, device
    metadata: AttentionMetadata
    sample_rows: list[int]  # index into the batch of each request that samples a token this step
    sample_token_index: torch.Tensor  # (num_sampled,) int64, device: packed row of its last new token


class ModelRunner:
    def __init__(self, model: torch.nn.Module, pool: KVCachePool, device: torch.device,
                 graphs: DecodeGraphs | None = None) -> None:
        self.model = model
        self.pool = pool
        self.device = device
        self.graphs = graphs  # CUDA graphs for pure-decode steps, when captured

    @torch.inference_mode()
    def execute(self, requests: list[Request], num_new_tokens: list[int],
                input_ids: torch.Tensor | None = None) -> tuple[list[int], torch.Tensor]:
        """Run the step; return (which batch rows sample, their logits (num_sampled, vocab) fp32).
        input_ids (pure decode only): this step's tokens already on the device, (num_requests,),
        when the host does not know them yet (they were sampled by the step still in flight)."""
        if self.graphs is not None and len(requests) <= self.graphs.max_batch_size \
                and all(n == 1 for n in num_new_tokens):
            return self._decode_with_graph(requests, input_ids)
        inputs = self.prepare(requests, num_new_tokens)
        if input_ids is not None:
            inputs.input_ids = input_ids
        hidden = self.model(inputs.input_ids, inputs.positions, self.pool.layers, inputs.metadata)
        if not inputs.sample_rows:
            return [], hidden.new_empty((0, 0), dtype=torch.float32)
        logits = self.model.compute_logits(hidden.index_select(0, inputs.sample_token_index))
        return inputs.sample_rows, logits

    def _decode_with_graph(self, requests: list[Request], input_ids: torch.Tensor | None
                           ) -> tuple[list[int], torch.Tensor]:
        block_size = self.pool.tokens_per_block
        positions = [r.num_computed_tokens for r in requests]
        slots = [r.block_ids[p // block_size] * block_size + p % block_size for r, p in zip(requests, positions)]
        tables = block_table_array(requests, self.graphs.max_blocks, self.graphs.padded_size(len(requests)))
        host_ids = [0] * len(requests) if input_ids is not None else \
            [r.token_ids[p] for r, p in zip(requests, positions)]
        logits = self.graphs.replay(host_ids, positions, slots, [p + 1 for p in positions], tables, input_ids)
        return list(range(len(requests))), logits

    def prepare(self, requests: list[Request], num_new_tokens: list[int]) -> StepInputs:
        block_size = self.pool.tokens_per_block
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        sample_rows: list[int] = []
        sample_index: list[int] = []
        for row, (request, num) in enumerate(zip(requests, num_new_tokens)):
            start = request.num_computed_tokens
            end = start + num
            input_ids.extend(request.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(slot_range(request.block_ids, start, end, block_size))
            query_start_loc.append(query_start_loc[-1] + num)
            seq_lens.append(end)
            if end == request.num_tokens:  # prompt complete (or decoding): the next token is due
                sample_rows.append(row)
                sample_index.append(query_start_loc[-1] - 1)
        tables = block_table_array(requests, max(len(r.block_ids) for r in requests))
        metadata = AttentionMetadata(
            query_start_loc=self._tensor(query_start_loc, torch.int32),
            seq_lens=self._tensor(seq_lens, torch.int32),
            block_tables=torch.from_numpy(tables).to(self.device, non_blocking=True),
            slot_mapping=self._tensor(slots, torch.int64),
            query_start_loc_cpu=query_start_loc,
            seq_lens_cpu=seq_lens,
            max_query_len=max(num_new_tokens),
            max_seq_len=max(seq_lens),
        )
        return StepInputs(
            input_ids=self._tensor(input_ids, torch.int64),
            positions=self._tensor(positions, torch.int64),
            metadata=metadata,
            sample_rows=sample_rows,
            sample_token_index=self._tensor(sample_index, torch.int64),
        )

    def _tensor(self, data, dtype: torch.dtype) -> torch.Tensor:
        # Built on the host and copied once; pinned, non-blocking copies come with the GPU path.
        return torch.tensor(data, dtype=dtype).to(self.device, non_blocking=True)


def slot_range(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of token positions [start, end) of a sequence with this block table."""
    if end - start <= 8:  # decode: a few tokens, plain Python is cheaper than numpy
        return [block_ids[t // block_size] * block_size + t % block_size for t in range(start, end)]
    positions = np.arange(start, end)
    return (np.asarray(block_ids)[positions // block_size] * block_size + positions % block_size).tolist()


def block_table_array(requests: list[Request], width: int, rows: int | None = None) -> np.ndarray:
    """(rows, width) int32 block tables padded with the null block 0 (rows >= len(requests))."""
    table = np.zeros((rows or len(requests), width), dtype=np.int32)
    for i, request in enumerate(requests):
        table[i, : len(request.block_ids)] = request.block_ids
    return table
