"""What one forward step tells attention about the packed batch.

The batch is packed and unpadded: the new tokens of all sequences are concatenated, and
sequence i owns rows [query_start_loc[i], query_start_loc[i+1]). Each sequence's context is
its cached tokens followed by its new ones; the new tokens sit at the end of the context.

    sequence i:  [ cached (seq_len - query_len) | new (query_len) ]
                   read from blocks                written to slot_mapping, then read too
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    query_start_loc: torch.Tensor  # (num_seqs + 1,) int32, device: prefix sums of new-token counts
    seq_lens: torch.Tensor  # (num_seqs,) int32, device: context length after this step (cached + new)
    block_tables: torch.Tensor  # (num_seqs, max_blocks_per_seq) int32, device: block ids, padded with 0
    slot_mapping: torch.Tensor  # (num_tokens,) int64, device: block * tokens_per_block + offset per new token
    # Host copies, so a backend that loops over sequences never syncs with the device.
    query_start_loc_cpu: list[int]  # (num_seqs + 1,)
    seq_lens_cpu: list[int]  # (num_seqs,)
    max_query_len: int
    max_seq_len: int

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def is_pure_decode(self) -> bool:
        """Every sequence computes exactly one new token."""
        return self.max_query_len == 1
