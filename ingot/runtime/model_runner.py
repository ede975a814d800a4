"""ModelRunner: a SchedulerOutput in, RunnerOutputs out. It turns the step into tensors, runs
the model (a captured CUDA graph when the step's shape has one), samples, verifies draft tokens,
and overlaps the host's work with the GPU.

The runner owns the model and the KV pool (device memory); the scheduler and the block
allocator never touch tensors.

Overlap. A pure decode step whose tokens nothing on the host needs before the next launch
(no logprobs, no penalties reading the history, no drafts) is launched and left in flight: its
tokens stay on the device and feed the next step's inputs, and are read back one step later,
while the GPU runs that next step. `execute` therefore yields the outputs of the steps whose
tokens became known, oldest first; the engine applies each before the runner continues (a
step sampled afterwards reads the request histories that output completed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ingot.attention import AttentionMetadata
from ingot.layers.sampler import Sampler, SamplingRow
from ingot.runtime.cuda_graphs import StepGraphs
from ingot.runtime.kv_cache import KVCachePool
from ingot.runtime.overlap import PendingStep
from ingot.runtime.prompt_scoring import score_rows
from ingot.runtime.records import PromptScores, RunnerOutput, SampledTokens, SchedulerOutput
from ingot.runtime.step_inputs import HostInputs, block_table_array, host_inputs
from ingot.sampling_params import SamplingParams
from ingot.speculative.verify import num_accepted


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # (num_tokens,) int64, device
    positions: torch.Tensor  # (num_tokens,) int64, device
    metadata: AttentionMetadata
    sample_index: torch.Tensor  # (num_sampled,) int64, device: packed rows whose logits are sampled
    host: HostInputs  # the host lists these were made from (prompt-scoring rows among them)


class ModelRunner:
    def __init__(self, model: torch.nn.Module, pool: KVCachePool, device: torch.device,
                 graphs: StepGraphs | None = None, async_output: bool = False, overlap_min_batch: int = 1,
                 want_hidden_states: bool = False) -> None:
        self.model = model
        self.pool = pool
        self.device = device
        self.graphs = graphs  # CUDA graphs for steps of uniform tokens per sequence, when captured
        self.sampler = Sampler()
        self.async_output = async_output
        self.overlap_min_batch = overlap_min_batch
        self.want_hidden_states = want_hidden_states  # return the sampled positions' hidden states
        self.in_flight: PendingStep | None = None

    # ---- the step ----

    def execute(self, step: SchedulerOutput) -> Iterator[RunnerOutput]:
        """Run `step`; yield the output of every step whose tokens are now known, oldest first.
        The caller must apply each output before asking for the next."""
        previous, self.in_flight = self.in_flight, None
        if previous is not None and self._defers(step) and previous.holds_all(step):
            launched = self._launch(step, previous)  # the GPU starts this step before the last is read
            yield previous.collect()
            self.in_flight = launched.hold_places()  # after the engine applied `previous`
            return
        if previous is not None:
            yield previous.collect()
            step = step.without_finished()  # requests that output stopped compute nothing more
        if not step.scheduled:
            return
        if self._defers(step):
            self.in_flight = self._launch(step, None).hold_places()
        else:
            yield self._run(step)

    def _defers(self, step: SchedulerOutput) -> bool:
        """Can this step's tokens stay on the device until after the next launch?"""
        if not self.async_output or self.want_hidden_states or len(step.scheduled) < self.overlap_min_batch:
            return False
        return all(s.num_tokens == 1 and s.samples and s.request.params.logprobs is None
                   and not _reads_history(s.request.params) for s in step.scheduled)

    def _run(self, step: SchedulerOutput) -> RunnerOutput:
        logits, hidden, scores = self._forward_and_score(step)
        return RunnerOutput(step, self._sample(step, logits), scores, hidden if self.want_hidden_states else None)

    def _launch(self, step: SchedulerOutput, previous: PendingStep | None) -> PendingStep:
        """Forward and sample on the device without reading the tokens back."""
        device_ids = previous.inputs_for(step) if previous is not None else None
        logits, _ = self.forward(step, device_ids)
        rows = [SamplingRow(r.params, r.prompt_token_ids, r.output_token_ids, r.generator) for r in step.requests]
        return PendingStep.start(step, self.sampler.sample_ids(logits, rows))

    # ---- forward ----

    def forward(self, step: SchedulerOutput, device_ids: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (num_sampled, vocab) fp32 and hidden states (num_sampled, hidden) of the step's
        sampled positions, in request order. device_ids (a decode step only): its input tokens,
        already on the device, (num_requests,)."""
        logits, hidden, _ = self._forward_and_score(step, device_ids)
        return logits, hidden

    @torch.inference_mode()
    def _forward_and_score(self, step: SchedulerOutput, device_ids: torch.Tensor | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor, list[PromptScores]]:
        """forward, and the scores of the prompt positions requests asked to have scored."""
        key = self._graph_key(step)
        if key is not None:
            return *self._replay(step, key, device_ids), []
        inputs = self.prepare(step)
        if device_ids is not None:
            inputs.input_ids = device_ids
        hidden = self.model(inputs.input_ids, inputs.positions, self.pool.layers, inputs.metadata)
        scores = self._score_prompts(inputs.host, hidden)
        hidden = hidden.index_select(0, inputs.sample_index)
        return self.model.compute_logits(hidden), hidden, scores

    def _score_prompts(self, host: HostInputs, hidden: torch.Tensor) -> list[PromptScores]:
        if not host.score_index:
            return []
        entries = score_rows(self.model, hidden, host.score_index, host.score_targets, host.score_top_k)
        scores, first_entry = [], 0
        for request, first_token, count in host.score_spans:
            scores.append(PromptScores(request, first_token, entries[first_entry:first_entry + count]))
            first_entry += count
        return scores

    def _graph_key(self, step: SchedulerOutput) -> tuple[int, int] | None:
        """A captured graph computes and samples every position: each request must sample all of
        its tokens (so none has prompt positions to score)."""
        if self.graphs is None or not all(s.num_sampled == s.num_tokens for s in step.scheduled):
            return None
        return self.graphs.key_for(len(step.scheduled), step.tokens_per_request)

    def _replay(self, step: SchedulerOutput, key: tuple[int, int], device_ids: torch.Tensor | None):
        inputs = host_inputs(step, self.pool.tokens_per_block)
        pad = self.graphs.backend.graph_padding(key[1])
        tables = block_table_array(step, self.graphs.max_blocks, key[0], pad.block)
        ids = [0] * len(inputs.input_ids) if device_ids is not None else inputs.input_ids
        return self.graphs.replay(key, ids, inputs.positions, inputs.slots, inputs.seq_lens, tables, device_ids)

    def prepare(self, step: SchedulerOutput) -> StepInputs:
        inputs = host_inputs(step, self.pool.tokens_per_block)
        tables = block_table_array(step, max(len(s.request.block_ids) for s in step.scheduled))
        metadata = AttentionMetadata(
            query_start_loc=self._tensor(inputs.query_start, torch.int32),
            seq_lens=self._tensor(inputs.seq_lens, torch.int32),
            block_tables=torch.from_numpy(tables).to(self.device, non_blocking=True),
            slot_mapping=self._tensor(inputs.slots, torch.int64),
            query_start_loc_cpu=inputs.query_start,
            seq_lens_cpu=inputs.seq_lens,
            max_query_len=max(s.num_tokens for s in step.scheduled),
            max_seq_len=max(inputs.seq_lens),
        )
        return StepInputs(self._tensor(inputs.input_ids, torch.int64), self._tensor(inputs.positions, torch.int64),
                          metadata, self._tensor(inputs.sample_index, torch.int64), inputs)

    def _tensor(self, data: list[int], dtype: torch.dtype) -> torch.Tensor:
        # From pageable host memory: the copy is staged by the driver and returns once the source
        # is read. Eager steps are prompt chunks, where this is small next to the compute; decode
        # steps replay graphs, which stage everything in one packed copy (cuda_graphs.py).
        return torch.tensor(data, dtype=dtype).to(self.device, non_blocking=True)

    # ---- sampling and verification ----

    @torch.inference_mode()
    def _sample(self, step: SchedulerOutput, logits: torch.Tensor) -> list[SampledTokens]:
        """One sampling row per sampled position; a request with drafts gets 1 + k rows, row i
        seeing the drafts before it as history (penalties), then the acceptance rule of
        ingot/speculative/verify.py picks the tokens it emits."""
        sampling = [s for s in step.scheduled if s.samples]
        rows = [SamplingRow(s.request.params, s.request.prompt_token_ids,
                            s.request.output_token_ids + s.draft_tokens[:i] if i else s.request.output_token_ids,
                            s.request.generator)
                for s in sampling for i in range(s.num_sampled)]
        if not rows:
            return []
        result = self.sampler(logits, rows)
        out, first = [], 0
        for s in sampling:
            targets = result.token_ids[first:first + s.num_sampled]
            accepted = num_accepted(s.draft_tokens, targets)
            logprobs = None
            if s.request.params.logprobs is not None:
                logprobs = [_logprob_entry(targets[i], result, first + i) for i in range(accepted + 1)]
            out.append(SampledTokens(s.request, targets[: accepted + 1], logprobs, len(s.draft_tokens) - accepted))
            first += s.num_sampled
        return out


def _reads_history(params: SamplingParams) -> bool:
    """Penalties read the previous tokens, so such a row cannot be sampled before they are known."""
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def _logprob_entry(token: int, result, row: int) -> dict[int, float]:
    entry = {token: result.logprobs[row]}
    if result.top_logprobs is not None:
        for alt, logprob in result.top_logprobs[row]:
            entry.setdefault(alt, logprob)
    return entry
