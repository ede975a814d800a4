"""One rank's share of a forward pass, run the same way on rank 0 and on every worker.

Rank 0 turns a SchedulerOutput into a ForwardPlan (plain data: token ids, positions, cache slots,
block tables, which rows to sample and score) and broadcasts it; then every rank runs it:

    tp ranks of a stage    run the stage's layers on their slices; all-reduces inside the layers
    pipeline stages        stage 0 embeds, each later stage receives (hidden, residual) from the one
                           before; the last stage computes the logits of the sampled rows (gathered
                           over its tp ranks) and the prompt scores, and its first rank sends them to
                           rank 0, which samples
With one rank nothing is sent: this is the whole forward pass of the single-process engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ingot.attention import AttentionMetadata
from ingot.runtime.prompt_scoring import score_rows


@dataclass
class ForwardPlan:
    """What every rank needs to compute one step; rank 0 broadcasts it (ingot/parallel/launch.py)."""

    input_ids: list[int] = field(default_factory=list)  # (num_tokens,)
    positions: list[int] = field(default_factory=list)  # (num_tokens,)
    slots: list[int] = field(default_factory=list)  # (num_tokens,) cache slot of each new token
    query_start: list[int] = field(default_factory=lambda: [0])  # (num_seqs + 1,)
    seq_lens: list[int] = field(default_factory=list)  # (num_seqs,)
    sample_index: list[int] = field(default_factory=list)  # rows whose logits are sampled
    score_index: list[int] = field(default_factory=list)  # rows that score the next prompt token
    score_targets: list[int] = field(default_factory=list)
    score_top_k: list[int] = field(default_factory=list)
    block_tables: np.ndarray | None = None  # (rows, width) int32
    graph_key: tuple[int, int] | None = None  # (padded batch, tokens per sequence) of a captured graph
    stop: bool = False  # no step: the workers leave their loop

    @classmethod
    def of(cls, host, block_tables: np.ndarray, graph_key: tuple[int, int] | None = None) -> "ForwardPlan":
        return cls(host.input_ids, host.positions, host.slots, host.query_start, host.seq_lens, host.sample_index,
                   host.score_index, host.score_targets, host.score_top_k, block_tables, graph_key)

    @property
    def max_query_len(self) -> int:
        return max(b - a for a, b in zip(self.query_start, self.query_start[1:]))


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # (num_tokens,) int64, device
    positions: torch.Tensor  # (num_tokens,) int64, device
    metadata: AttentionMetadata
    sample_index: torch.Tensor  # (num_sampled,) int64, device: packed rows whose logits are sampled


@dataclass
class StageOutput:
    """On rank 0 (None elsewhere): the sampled rows' logits (num_sampled, vocab) fp32, their hidden
    states (None when they stayed on another rank), and the prompt scores of plan.score_index."""

    logits: torch.Tensor
    hidden: torch.Tensor | None
    score_entries: list[dict[int, float]]


class StageRunner:
    def __init__(self, model: torch.nn.Module, pool, device: torch.device, vocab_size: int, graphs=None,
                 state=None) -> None:
        self.model, self.pool, self.device, self.vocab_size = model, pool, device, vocab_size
        self.graphs = graphs  # StepGraphs of this rank, when captured
        self.state = state  # ParallelState; None in a single-process engine

    def run(self, plan: ForwardPlan, device_ids: torch.Tensor | None = None) -> StageOutput | None:
        with torch.inference_mode():
            if plan.graph_key is not None:
                logits, hidden = self.graphs.replay(plan.graph_key, [0] * len(plan.input_ids) if device_ids is not None
                                                    else plan.input_ids, plan.positions, plan.slots, plan.seq_lens,
                                                    plan.block_tables, device_ids)
                return StageOutput(logits, hidden, []) if self._is_rank0 else None
            return self._run_eager(plan, device_ids)

    def _run_eager(self, plan: ForwardPlan, device_ids: torch.Tensor | None) -> StageOutput | None:
        inputs = self.tensors(plan)
        if device_ids is not None:
            inputs.input_ids = device_ids
        layout = self.state.layout if self.state is not None else None
        intermediate = self._receive_intermediate(plan) if layout is not None and not layout.is_first_stage else None
        out = self.model(inputs.input_ids, inputs.positions, self.pool.layers, inputs.metadata, intermediate)
        if layout is not None and not layout.is_last_stage:
            self._send_intermediate(out)
            return self._receive_from_last_stage(plan) if self._is_rank0 else None
        entries = score_rows(self.model, out, plan.score_index, plan.score_targets, plan.score_top_k) \
            if plan.score_index else []
        hidden = out.index_select(0, inputs.sample_index)
        logits = self.model.compute_logits(hidden) if plan.sample_index else \
            torch.empty((0, self.vocab_size), dtype=torch.float32, device=self.device)
        if self._is_rank0:
            return StageOutput(logits, hidden, entries)
        if self.state.rank == self.state.last_stage_leader:
            self._send_to_rank0(logits, entries)
        return None

    @property
    def _is_rank0(self) -> bool:
        return self.state is None or self.state.rank == 0

    def tensors(self, plan: ForwardPlan) -> StepInputs:
        metadata = AttentionMetadata(
            query_start_loc=self._tensor(plan.query_start, torch.int32),
            seq_lens=self._tensor(plan.seq_lens, torch.int32),
            block_tables=torch.from_numpy(plan.block_tables).to(self.device, non_blocking=True),
            slot_mapping=self._tensor(plan.slots, torch.int64),
            query_start_loc_cpu=plan.query_start, seq_lens_cpu=plan.seq_lens,
            max_query_len=plan.max_query_len, max_seq_len=max(plan.seq_lens))
        return StepInputs(self._tensor(plan.input_ids, torch.int64), self._tensor(plan.positions, torch.int64),
                          metadata, self._tensor(plan.sample_index, torch.int64))

    def _tensor(self, data: list[int], dtype: torch.dtype) -> torch.Tensor:
        # From pageable host memory: the copy is staged by the driver and returns once the source
        # is read. Eager steps are prompt chunks, where this is small next to the compute; decode
        # steps replay graphs, which stage everything in one packed copy (cuda_graphs.py).
        return torch.tensor(data, dtype=dtype).to(self.device, non_blocking=True)

    # ---- pipeline stages ----

    def _neighbour(self, stage_offset: int) -> int:
        layout = self.state.layout
        return self.state.rank_of(layout.pp_rank + stage_offset, layout.tp_rank)

    def _receive_intermediate(self, plan: ForwardPlan) -> tuple[torch.Tensor, torch.Tensor]:
        import torch.distributed as dist

        shape = (len(plan.input_ids), self.model.cfg.hidden_size)
        dtype = next(self.model.parameters()).dtype
        hidden, residual = (torch.empty(shape, dtype=dtype, device=self.device) for _ in range(2))
        dist.recv(hidden, self._neighbour(-1))
        dist.recv(residual, self._neighbour(-1))
        return hidden, residual

    def _send_intermediate(self, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        import torch.distributed as dist

        for tensor in out:
            dist.send(tensor.contiguous(), self._neighbour(+1))

    def _send_to_rank0(self, logits: torch.Tensor, entries: list) -> None:
        import torch.distributed as dist

        dist.send(logits.contiguous(), 0)
        dist.send_object_list([entries], 0, group=self.state.control)

    def _receive_from_last_stage(self, plan: ForwardPlan) -> StageOutput:
        import torch.distributed as dist

        logits = torch.empty((len(plan.sample_index), self.vocab_size), dtype=torch.float32, device=self.device)
        dist.recv(logits, self.state.last_stage_leader)
        entries = [None]
        dist.recv_object_list(entries, self.state.last_stage_leader, group=self.state.control)
        return StageOutput(logits, None, entries[0])
