"""Each served engine as a KServe v2 model with the tensors of Triton's TensorRT-LLM `ensemble`.

Inputs (batch dimension first, as a model with max_batch_size > 0; every one but text_input and
max_tokens optional):

    text_input BYTES [B, 1]   max_tokens INT32   temperature FP32   top_k INT32   top_p FP32
    stop_words BYTES [B, N]   bad_words BYTES [B, N]   random_seed UINT64   stream BOOL   end_id INT32
    repetition_penalty, presence_penalty, frequency_penalty, length_penalty FP32   pad_id, beam_width INT32
    min_length INT32   return_log_probs, return_context_logits, return_generation_logits BOOL
Output: text_output BYTES [B, 1], the generated text only (as TensorRT-LLM's exclude_input_in_output).

A parameter tensor holds one value for the whole batch or one per row. Each stop_words /
bad_words element is a comma-separated list of words (TensorRT-LLM's preprocessing reads them
with a CSV reader). As in TensorRT-LLM, decoding is greedy unless top_k or top_p asks to sample.
What ingot cannot honour is refused with a 400 naming the input: non-empty bad_words, beam_width
> 1, min_length > 1, any return_*_logits / log_probs.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

import ingot
from ingot.errors import RequestError
from ingot.sampling_params import SamplingParams
from ingot.serve.admission import QueueSlots
from ingot.serve.errors import APIError
from ingot.serve.generation import Job, stream_outputs
from ingot.serve.kserve_tensors import DTYPES, KServeError, bad, datatype_of
from ingot.serve.limits import flag
from ingot.serve.protocol import check_stop_caps

# name -> (datatype, dims without the batch dimension, required)
INPUTS = {
    "text_input": ("BYTES", [1], True), "max_tokens": ("INT32", [1], True),
    "bad_words": ("BYTES", [-1], False), "stop_words": ("BYTES", [-1], False),
    "end_id": ("INT32", [1], False), "pad_id": ("INT32", [1], False),
    "top_k": ("INT32", [1], False), "top_p": ("FP32", [1], False), "temperature": ("FP32", [1], False),
    "length_penalty": ("FP32", [1], False), "repetition_penalty": ("FP32", [1], False),
    "min_length": ("INT32", [1], False), "presence_penalty": ("FP32", [1], False),
    "frequency_penalty": ("FP32", [1], False), "random_seed": ("UINT64", [1], False),
    "return_log_probs": ("BOOL", [1], False), "return_context_logits": ("BOOL", [1], False),
    "return_generation_logits": ("BOOL", [1], False), "beam_width": ("INT32", [1], False),
    "stream": ("BOOL", [1], False),
}
OUTPUTS = {"text_output": ("BYTES", [-1])}
# the model-config spelling of each datatype
CONFIG_TYPES = {"BYTES": "TYPE_STRING", "INT32": "TYPE_INT32", "FP32": "TYPE_FP32", "UINT64": "TYPE_UINT64",
                "BOOL": "TYPE_BOOL"}
# input -> (the most it may be, what a larger value asks for)
REFUSED = {"beam_width": (1, "beam search"), "min_length": (1, "a minimum length"),
           "return_log_probs": (0, "log-probabilities"), "return_context_logits": (0, "context logits"),
           "return_generation_logits": (0, "generation logits")}


@dataclass
class Row:
    """One prompt of an infer request, with its sampling parameters."""

    text: str
    params: SamplingParams
    stream: bool


def resolve(state, name: str, version: str | None = None):
    """The ServedModel for a name and version (none: the highest loaded); KServeError 404 naming what is served."""
    from ingot.serve.models import ModelError

    try:
        return state.models.get(name, version)
    except ModelError as exc:
        raise KServeError(exc.status, f"Request for unknown model: {exc.message}") from None


def ready(state, served=None) -> bool:
    """The server (served None: every loaded model) or one model can serve."""
    failure = state.models.failure() if served is None else served.llm.failure()
    return failure is None and not state.draining


def server_metadata() -> dict:
    return {"name": "ingot", "version": ingot.__version__,
            "extensions": ["binary_tensor_data", "generate", "model_configuration", "model_repository"]}


def check_repository_action(state, action: str, parameters: dict) -> None:
    """Refuse a load while the server drains (it would start an engine the shutdown then stops)."""
    if action == "load" and state.draining:
        raise KServeError(503, "the server is shutting down; load the model on another replica")
    check_repository_parameters(action, parameters)


def check_repository_parameters(action: str, parameters: dict) -> None:
    """Load takes none of Triton's overrides (a config or files sent with the request: ingot reads the
    model's folder); unload takes unload_dependents, which means nothing here (no ensembles)."""
    allowed = {"unload_dependents"} if action == "unload" else set()
    extra = sorted(set(parameters) - allowed)
    if extra:
        raise bad(f"{action} parameters {extra} are not supported: ingot {action}s a model as its folder in the "
                  "repository describes it (edit DIR/NAME/model_config.json, then load it)")


def model_metadata(state, served) -> dict:
    def tensor(name, datatype, dims):
        return {"name": name, "datatype": datatype, "shape": [-1, *dims]}
    return {"name": served.name, "versions": state.models.versions(served.name), "platform": "ingot",
            "inputs": [tensor(n, t, d) for n, (t, d, _) in INPUTS.items()],
            "outputs": [tensor(n, t, d) for n, (t, d) in OUTPUTS.items()]}


def model_config(served) -> dict:
    """Triton's model configuration (model_config.proto) in its JSON form."""
    return {"name": served.name, "platform": "ingot", "backend": "ingot",
            "max_batch_size": served.llm.spec.build.max_batch_size,
            "input": [{"name": n, "data_type": CONFIG_TYPES[t], "dims": d, "optional": not required}
                      for n, (t, d, required) in INPUTS.items()],
            "output": [{"name": n, "data_type": CONFIG_TYPES[t], "dims": d} for n, (t, d) in OUTPUTS.items()],
            "model_transaction_policy": {"decoupled": True}}


def rows_from_inputs(inputs: dict[str, np.ndarray]) -> list[Row]:
    """The request's prompts and parameters; KServeError 400 naming the input when one is wrong."""
    for name, array in inputs.items():
        if name not in INPUTS:
            raise bad(f"unexpected inference input '{name}' for model; allowed inputs: {sorted(INPUTS)}")
        want = INPUTS[name][0]
        got = datatype_of(array)
        if got != want:
            raise bad(f"inference input '{name}' data-type is '{got}', but model expects '{want}'")
    for name, (_, _, required) in INPUTS.items():
        if required and name not in inputs:
            raise bad(f"expected a value for the required input '{name}'")
    texts = inputs["text_input"].reshape(-1)
    if texts.size == 0:
        raise bad("input 'text_input' is empty: give one prompt per batch row")
    rows = []
    for i, raw in enumerate(texts):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"input 'text_input' row {i} is not valid UTF-8") from None
        rows.append(_row(text, i, len(texts), inputs))
    if len(rows) > 1 and any(row.stream for row in rows):
        raise bad("input 'stream' is true for a batch of several prompts: stream one prompt per request")
    return rows


def _scalar(inputs: dict, name: str, row: int, batch: int, default=None):
    if name not in inputs:
        return default
    flat = inputs[name].reshape(-1)
    if flat.size == 1:
        return flat[0].item()
    if flat.size == batch:
        return flat[row].item()
    raise bad(f"input '{name}' has {flat.size} values; give one, or one per prompt ({batch})")


def _words(inputs: dict, name: str, row: int, batch: int) -> list[str]:
    if name not in inputs:
        return []
    array = inputs[name]
    elements = array[row].reshape(-1) if array.ndim >= 2 and array.shape[0] == batch else array.reshape(-1)
    words = []
    for element in elements:
        words += [w for line in csv.reader([element.decode("utf-8", "replace")]) for w in line if w]
    return words


def _row(text: str, i: int, batch: int, inputs: dict) -> Row:
    for name, (most, what) in REFUSED.items():
        value = _scalar(inputs, name, i, batch, 0)
        if value > most:
            raise bad(f"input '{name}' = {value}: ingot does not support {what} on this endpoint")
    if _words(inputs, "bad_words", i, batch):
        raise bad("input 'bad_words': ingot cannot ban words yet; send it empty or leave it out")
    top_k = _scalar(inputs, "top_k", i, batch, 0)
    top_p = _scalar(inputs, "top_p", i, batch, 0.0)
    sampling = top_k > 1 or top_p > 0.0  # TensorRT-LLM: top_k 0 (or 1) and top_p 0 decode greedily
    end_id = _scalar(inputs, "end_id", i, batch)
    seed = _scalar(inputs, "random_seed", i, batch)
    try:
        params = SamplingParams(
            max_tokens=_scalar(inputs, "max_tokens", i, batch),
            temperature=_scalar(inputs, "temperature", i, batch, 1.0) if sampling else 0.0,
            top_k=top_k, top_p=top_p if top_p != 0.0 else 1.0,
            repetition_penalty=_scalar(inputs, "repetition_penalty", i, batch, 1.0),
            presence_penalty=_scalar(inputs, "presence_penalty", i, batch, 0.0),
            frequency_penalty=_scalar(inputs, "frequency_penalty", i, batch, 0.0),
            seed=None if seed is None else int(seed) % 2**63,
            stop=_words(inputs, "stop_words", i, batch),
            stop_token_ids=[] if end_id is None or end_id < 0 else [end_id])
    except RequestError as exc:
        raise bad(str(exc).replace("SamplingParams.", "input ")) from None
    return Row(text, params, bool(_scalar(inputs, "stream", i, batch, False)))


def admit_rows(state, slots: QueueSlots, rows: list[Row]) -> None:
    """Each row is a prompt, a request in the engine: at most --max-prompts-per-request of them, each
    holding a --max-queue slot (admission.py), as the prompts of /v1/completions do; their stop_words
    within the caps on stop strings."""
    for name in ("max_prompts_per_request", "max_sequences_per_request"):  # a row is one prompt, one sequence
        most = getattr(state.limits, name)
        if len(rows) > most:
            raise bad(f"{len(rows)} rows of 'text_input' in one request, over this server's limit of {most} "
                      f"({flag(name)}); send them in several requests")
    for row in rows:
        try:
            check_stop_caps(row.params.stop, state.limits, "stop_words")
        except APIError as exc:
            raise bad(f"input 'stop_words': {exc.message}") from None
    try:
        slots.hold(len(rows))
    except APIError as exc:
        raise KServeError(exc.status, exc.message) from None


def rows_from_json(body: dict) -> list[Row]:
    """The generate extension: input names as JSON keys with scalar or list values, typed by the model."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object of input names to values")
    inputs = {}
    for name, value in body.items():
        if name in ("id", "parameters"):
            continue
        if name not in INPUTS:
            raise bad(f"unexpected inference input '{name}' for model; allowed inputs: {sorted(INPUTS)}")
        datatype = INPUTS[name][0]
        values = value if isinstance(value, list) else [value]
        try:
            if datatype == "BYTES":
                if not all(isinstance(v, str) for v in values):
                    raise ValueError("expects strings")
                array = np.empty(len(values), dtype=object)
                array[:] = [v.encode("utf-8") for v in values]
            else:
                if not all(isinstance(v, bool) == (datatype == "BOOL") and isinstance(v, (int, float))
                           for v in values):
                    raise ValueError("expects true or false" if datatype == "BOOL" else "expects numbers")
                array = np.array(values, dtype=DTYPES[datatype])
        except (ValueError, OverflowError) as exc:
            raise bad(f"input '{name}' {exc}") from None
        inputs[name] = array
    return rows_from_inputs(inputs)


async def _job(llm, row: Row) -> Job:
    from starlette.concurrency import run_in_threadpool

    from ingot.serve.handlers import check_prompt, encode_text

    if llm.tokenizer is None:
        raise bad("this engine has no tokenizer, so it cannot take text_input")
    try:
        ids = await run_in_threadpool(encode_text, llm, row.text, "text_input")
        check_prompt(llm, ids, row.params.max_tokens, "text_input", "max_tokens")
    except APIError as exc:
        raise bad(exc.message) from None
    return Job(ids, row.params, row.text)


async def stream_text(state, served, row: Row, request_id: str) -> AsyncIterator[tuple[str, bool]]:
    """(new text, finished) as the row's answer grows; KServeError when it cannot run."""
    job = await _job(served.llm, row)
    try:
        async with aclosing(stream_outputs(served.llm, [job], state.metrics, request_id, "text_input")) as outputs:
            async for _, out in outputs:
                if out.delta_text or out.finished:
                    yield out.delta_text, out.finished
    except APIError as exc:
        raise KServeError(exc.status, exc.message) from None


async def generate_texts(state, served, rows: list[Row], request_id: str) -> list[str]:
    """Every row's whole answer, the rows run concurrently."""
    async def one(i: int, row: Row) -> str:
        parts = []
        async with aclosing(stream_text(state, served, row, f"{request_id}-{i}")) as deltas:
            async for delta, _ in deltas:
                parts.append(delta)
        return "".join(parts)
    return list(await asyncio.gather(*(one(i, row) for i, row in enumerate(rows))))


class Inference:
    """Triton's per-model counters around one inference request (success, failure, durations)."""

    def __init__(self, state, served, batch: int = 1) -> None:
        self.metrics, self.model, self.version, self.batch = state.metrics, served.name, served.version, batch
        self.start = time.perf_counter()
        self.first: float | None = None
        self.metrics.inference_started(self.model, self.version)

    def first_response(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def done(self, error: BaseException | None) -> None:
        """Record the outcome; Triton's failure reasons: REJECTED (4xx), CANCELED (the client left), BACKEND."""
        if error is None:
            reason = None
        elif isinstance(error, (GeneratorExit, asyncio.CancelledError)):
            reason = "CANCELED"
        else:
            reason = "REJECTED" if getattr(error, "status", 500) < 500 else "BACKEND"
        first = None if self.first is None else self.first - self.start
        self.metrics.observe_inference(self.model, self.version, self.batch, time.perf_counter() - self.start,
                                       first, reason)
