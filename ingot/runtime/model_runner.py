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

Structured output. A request with a grammar (request.matcher) needs its previous token on the host
to compute the next mask, so a step holding one is never deferred. Its mask is filled on the host
after the forward is launched and before the logits are read, so on a GPU the mask work overlaps
the forward; the sampler applies the packed masks of the constrained rows in one op.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from ingot.layers.sampler import Sampler, SamplingRow
from ingot.parallel.stage import ForwardPlan, StageRunner, StepInputs
from ingot.runtime.cuda_graphs import StepGraphs
from ingot.runtime.kv_cache import KVCachePool
from ingot.runtime.overlap import PendingStep
from ingot.runtime.records import PromptScores, RunnerOutput, SampledTokens, SchedulerOutput
from ingot.runtime.step_inputs import HostInputs, block_table_array, host_inputs
from ingot.sampling_params import SamplingParams
from ingot.speculative.verify import emitted_tokens
from ingot.structured.grammar import bitmask_words

logger = logging.getLogger("ingot")


class ModelRunner:
    def __init__(self, model: torch.nn.Module, pool: KVCachePool, device: torch.device,
                 graphs: StepGraphs | None = None, async_output: bool = False, overlap_min_batch: int = 1,
                 want_hidden_states: bool = False, workers=None) -> None:
        self.model = model
        self.pool = pool
        self.device = device
        # The other ranks of a multi-rank engine (ingot/parallel/launch.py): they run each step's
        # plan on their slices; this process is rank 0, which schedules and samples.
        self.workers = workers
        self.stage = StageRunner(model, pool, device, model.cfg.vocab_size, graphs,
                                 workers.state if workers is not None else None)
        self.sampler = Sampler()
        self.async_output = async_output
        self.overlap_min_batch = overlap_min_batch
        self.want_hidden_states = want_hidden_states  # return the sampled positions' hidden states
        self.in_flight: PendingStep | None = None

    @property
    def graphs(self) -> StepGraphs | None:
        """CUDA graphs for steps of uniform tokens per sequence, when captured (the stage replays them)."""
        return self.stage.graphs

    @graphs.setter
    def graphs(self, graphs: StepGraphs | None) -> None:
        self.stage.graphs = graphs

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
                   and not _reads_history(s.request.params) and s.request.matcher is None for s in step.scheduled)

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

    def _forward_and_score(self, step: SchedulerOutput, device_ids: torch.Tensor | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor | None, list[PromptScores]]:
        """forward, and the scores of the prompt positions requests asked to have scored."""
        host = host_inputs(step, self.pool.tokens_per_block)
        plan = ForwardPlan.of(host, *self._tables_and_key(step))
        if self.workers is None:
            out = self.stage.run(plan, device_ids)
        else:
            out = self._run_with_workers(plan)
        return out.logits, out.hidden, self._scores(host, out.score_entries)

    def _run_with_workers(self, plan: ForwardPlan):
        """Every rank runs the same plan on its slice; a failed collective is explained by rank."""
        try:
            self.workers.broadcast(plan)
            return self.stage.run(plan)
        except RuntimeError as exc:
            raise self.workers.explain(exc) from exc

    def _tables_and_key(self, step: SchedulerOutput) -> tuple[np.ndarray, tuple[int, int] | None]:
        """The block tables and, when the step replays a captured graph, its key (the tables then
        padded to the graph's rows and width)."""
        key = self._graph_key(step)
        if key is None:
            return block_table_array(step, max(len(s.request.block_ids) for s in step.scheduled)), None
        pad = self.graphs.backend.graph_padding(key[1])
        return block_table_array(step, self.graphs.max_blocks, key[0], pad.block), key

    def _scores(self, host: HostInputs, entries: list[dict[int, float]]) -> list[PromptScores]:
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

    def prepare(self, step: SchedulerOutput) -> StepInputs:
        """The step's input tensors for an eager forward (what tests feed the model directly)."""
        host = host_inputs(step, self.pool.tokens_per_block)
        return self.stage.tensors(ForwardPlan.of(host, block_table_array(
            step, max(len(s.request.block_ids) for s in step.scheduled))))

    # ---- sampling and verification ----

    @torch.inference_mode()
    def _sample(self, step: SchedulerOutput, logits: torch.Tensor) -> list[SampledTokens]:
        """One sampling row per sampled position; a request with drafts gets 1 + k rows, row i
        seeing the drafts before it as history (penalties), then the acceptance rule of
        ingot/speculative/verify.py picks the tokens it emits."""
        sampling = [s for s in step.scheduled if s.samples]
        masks = _grammar_masks(sampling, logits.shape[1])  # on the host, while the device computes the logits
        rows = [SamplingRow(s.request.params, s.request.prompt_token_ids,
                            s.request.output_token_ids + s.draft_tokens[:i] if i else s.request.output_token_ids,
                            s.request.generator, masks.get(s.request))
                for s in sampling for i in range(s.num_sampled)]
        if not rows:
            return []
        result = self.sampler(logits, rows)
        out, first = [], 0
        for s in sampling:
            targets = result.token_ids[first:first + s.num_sampled]
            tokens = emitted_tokens(s.draft_tokens, targets)
            logprobs = None
            if s.request.params.logprobs is not None:
                logprobs = [_logprob_entry(token, result, first + i) for i, token in enumerate(tokens)]
            out.append(SampledTokens(s.request, tokens, logprobs, len(s.draft_tokens) + 1 - len(tokens)))
            first += s.num_sampled
            if s.request.matcher is not None:
                _advance(s.request, tokens)
        return out


def _grammar_masks(sampling: list, vocab_size: int) -> dict:
    """request -> its packed mask of allowed next tokens, (ceil(vocab / 32),) int32 CPU, for the
    requests with a grammar. Such a request never has drafts (SamplingParams.structured turns
    speculation off), so it samples one position."""
    constrained = [s.request for s in sampling if s.request.matcher is not None]
    if not constrained:
        return {}
    assert all(not s.draft_tokens for s in sampling if s.request.matcher is not None)
    bitmask = torch.empty((len(constrained), bitmask_words(vocab_size)), dtype=torch.int32)
    for row, request in enumerate(constrained):
        request.matcher.fill(bitmask, row)
    return {request: bitmask[row] for row, request in enumerate(constrained)}


def _advance(request, tokens: list[int]) -> None:
    """The grammar follows the tokens the request accepted. The mask allowed only tokens the grammar
    accepts, so a refusal is a bug; the request goes on unconstrained from there rather than fail."""
    for token in tokens:
        if not request.matcher.accept(token):
            logger.error("request %s: the grammar refused token %d that its mask allowed; constraint dropped",
                         request.request_id, token)
            request.matcher = None
            return


def _reads_history(params: SamplingParams) -> bool:
    """Penalties read the previous tokens, so such a row cannot be sampled before they are known."""
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def _logprob_entry(token: int, result, row: int) -> dict[int, float]:
    entry = {token: result.logprobs[row]}
    if result.top_logprobs is not None:
        for alt, logprob in result.top_logprobs[row]:
            entry.setdefault(alt, logprob)
    return entry
