"""KServe v2 `GRPCInferenceService` (`ingot serve --grpc-port`), on the event loop that runs uvicorn.

grpc.aio's server runs its handlers as coroutines of the loop it is started on; server.py starts it
inside the same asyncio.run as uvicorn's Server.serve(), so gRPC and HTTP share the AsyncLLM, its
streams (each is bound to the loop it was made on) and the metrics without locks.

The messages and the service stub are the ones generated from Triton's published
grpc_service.proto / model_config.proto that ship in `tritonclient.grpc` (service_pb2,
service_pb2_grpc, model_config_pb2): the same generated code Triton's own clients use, so the wire
format cannot drift, and no third-party .proto is copied into ingot.

Served: ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig,
ModelInfer and the decoupled, bidirectional ModelStreamInfer (with input `stream` true, one
response per piece of new text, the last flagged `triton_final_response`; several requests on one
stream run concurrently), and the model repository's RepositoryIndex, RepositoryModelLoad and
RepositoryModelUnload. Other RPCs answer UNIMPLEMENTED (grpc's default). Errors: INVALID_ARGUMENT
for malformed tensors or a failed load, NOT_FOUND for an unknown (or unloaded) model, UNAVAILABLE
while draining or when the engine stopped; on a stream, a failed request gets a response with
error_message and the stream goes on.

The HTTP server's limits (limits.py) hold here too, in gRPC's terms:

    max_body_bytes     largest request message (RESOURCE_EXHAUSTED above: gRPC's own check)
    max_header_bytes   largest request metadata (RESOURCE_EXHAUSTED above: gRPC's own check)
    read_timeout       a connection's HTTP/2 handshake (the connection is closed), and a unary call's
                       request message from the call's start (DEADLINE_EXCEEDED: ReadDeadline)

A connection that has shaken hands may stay open with no call (channels are kept for reuse, and
closing idle ones made calls that raced the close fail with UNAVAILABLE), and a ModelStreamInfer
stream may stay quiet between its requests (Triton's clients hold one open), so its messages have no
deadline, only the size cap. No request holds a --max-queue slot before its message is whole.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
from contextlib import aclosing

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from ingot.serve import kserve_model as model
from ingot.serve.admission import QueueSlots
from ingot.serve.kserve_tensors import DTYPES, KServeError, bad, from_binary, serialize_bytes
from ingot.serve.limits import flag

STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                404: grpc.StatusCode.NOT_FOUND, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
                503: grpc.StatusCode.UNAVAILABLE}
# datatype -> the InferTensorContents field that carries it (FP16 and BF16 only travel raw)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
FINAL = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"

_ids = itertools.count()
logger = logging.getLogger("ingot.serve")


async def start(state, host: str, port: int) -> grpc.aio.Server:
    limits = state.limits
    server = grpc.aio.server(interceptors=[ReadDeadline(limits.read_timeout)], options=[
        ("grpc.max_receive_message_length", limits.max_body_bytes),
        ("grpc.max_metadata_size", limits.max_header_bytes),  # gRPC refuses some calls above this soft limit,
        ("grpc.absolute_max_metadata_size", limits.max_header_bytes),  # and every call above the hard one
        ("grpc.server_handshake_timeout_ms", int(limits.read_timeout * 1000))])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(state), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server


class ReadDeadline(grpc.aio.ServerInterceptor):
    """A unary call's request message must arrive whole within `timeout` seconds of the call's start.

    grpc.aio reads a unary call's message before its handler runs, and has no deadline of its own for
    it: a client that sends the headers and part of a message holds the call (and the part, up to
    max_receive_message_length) for as long as it likes. Served as stream-unary instead (the same
    bytes on the wire), the handler runs at the call's start and reads the message itself, with a
    deadline."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        unary, timeout = handler.unary_unary, self.timeout

        async def read_then_handle(requests, context):
            try:
                request = await asyncio.wait_for(anext(aiter(requests)), timeout)
            except StopAsyncIteration:  # no message: the call ended first (gRPC refused it, or the client left)
                raise asyncio.CancelledError from None  # what grpc.aio's own unary path does: nothing to answer
            except asyncio.TimeoutError:
                logger.warning("gRPC %s from %s: the request message did not arrive within %g s (--read-timeout)",
                               handler_call_details.method, context.peer(), timeout)
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"the request message did not arrive "
                                    f"within {timeout:g} s ({flag('read_timeout')})")
            return await unary(request, context)

        return grpc.stream_unary_rpc_method_handler(read_then_handle, handler.request_deserializer,
                                                    handler.response_serializer)


class Service(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state) -> None:
        self.state = state

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=model.ready(self.state))

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(**model.server_metadata())

    async def ModelReady(self, request, context):
        await self._authorize(context)
        try:
            served = model.resolve(self.state, request.name, request.version)
        except KServeError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=model.ready(self.state, served))

    async def ModelMetadata(self, request, context):
        served = await self._resolve(context, request.name, request.version)
        return json_format.ParseDict(model.model_metadata(self.state, served), service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request, context):
        served = await self._resolve(context, request.name, request.version)
        config = json_format.ParseDict(model.model_config(served), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request, context):
        await self._authorize(context)
        rows = self.state.models.index(ready_only=request.ready)
        return service_pb2.RepositoryIndexResponse(
            models=[service_pb2.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def RepositoryModelLoad(self, request, context):
        await self._repository(context, "load", request.model_name, request.parameters)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self._repository(context, "unload", request.model_name, request.parameters)
        return service_pb2.RepositoryModelUnloadResponse()

    async def _repository(self, context, action: str, name: str, parameters) -> None:
        from ingot.serve.models import ModelError

        await self._authorize(context)
        try:
            model.check_repository_action(self.state, action, dict(parameters))
            await getattr(self.state.models, action)(name)
        except (KServeError, ModelError) as exc:
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)

    async def ModelInfer(self, request, context):
        await self._authorize(context)
        try:
            responses = [r async for r in self._run(request, streaming=False)]
        except KServeError as exc:
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        return responses[-1]

    async def ModelStreamInfer(self, request_iterator, context):
        await self._authorize(context)
        queue: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def serve_one(request) -> None:
            try:
                async with aclosing(self._run(request, streaming=True)) as responses:
                    async for response in responses:
                        queue.put_nowait(service_pb2.ModelStreamInferResponse(infer_response=response))
            except KServeError as exc:
                queue.put_nowait(service_pb2.ModelStreamInferResponse(error_message=exc.message))

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(serve_one(request))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), queue.put_nowait(None)))
            queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while not (reader.done() and not tasks and queue.empty()):
                item = await queue.get()
                if item is not None:
                    yield item
        finally:  # the client went away or cancelled: stop its requests (which aborts them in the engine)
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _run(self, request, streaming: bool):
        """The responses of one infer request: one, or with `stream` one per piece of new text."""
        served = model.resolve(self.state, request.model_name, request.model_version)
        if self.state.draining:
            raise KServeError(503, "the server is shutting down; send the request to another replica")
        rows = model.rows_from_inputs(_inputs(request))
        slots = QueueSlots(self.state)  # released below, however the request ends
        model.admit_rows(self.state, slots, rows)
        inference, error = model.Inference(self.state, served, len(rows)), None
        request_id = f"grpc-{next(_ids)}"
        empty_final = request.parameters[EMPTY_FINAL].bool_param if EMPTY_FINAL in request.parameters else False
        try:
            if streaming and rows[0].stream:
                async with aclosing(model.stream_text(self.state, served, rows[0], request_id)) as deltas:
                    async for delta, finished in deltas:
                        inference.first_response()
                        yield self._response(served, request, [delta], final=finished and not empty_final)
                if empty_final:
                    yield self._response(served, request, None, final=True)
            else:
                texts = await model.generate_texts(self.state, served, rows, request_id)
                inference.first_response()
                yield self._response(served, request, texts, final=True)
        except BaseException as exc:
            error = exc
            raise
        finally:
            inference.done(error)
            slots.release()

    def _response(self, served, request, texts: list[str] | None, final: bool):
        response = service_pb2.ModelInferResponse(model_name=served.name, model_version=served.version,
                                                  id=request.id)
        response.parameters[FINAL].bool_param = final
        if texts is not None:
            wanted = [o.name for o in request.outputs] or ["text_output"]
            for name in wanted:
                if name != "text_output":
                    raise bad(f"unknown output '{name}': this model's outputs are ['text_output']")
                response.outputs.add(name=name, datatype="BYTES", shape=[len(texts), 1])
                response.raw_output_contents.append(serialize_bytes([t.encode("utf-8") for t in texts]))
        return response

    async def _resolve(self, context, name: str, version: str):
        await self._authorize(context)
        try:
            return model.resolve(self.state, name, version)
        except KServeError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)

    async def _authorize(self, context) -> None:
        key = self.state.api_key
        if key is None:
            return
        sent = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(sent.encode("utf-8"), f"Bearer {key}".encode("utf-8")):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong API key: send the metadata 'authorization: Bearer KEY'")


def _inputs(request) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: give one per input, or none")
    inputs = {}
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if datatype not in DTYPES:
            raise bad(f"input '{name}': datatype {datatype!r} is not one of {sorted(DTYPES)}")
        if any(d < 0 for d in shape):
            raise bad(f"input '{name}': shape {shape} has a negative dimension")
        count = int(np.prod(shape)) if shape else 1
        if name in inputs:
            raise bad(f"input '{name}' is given twice")
        inputs[name] = from_binary(name, datatype, shape, count, raw[i]) if raw else _from_contents(
            name, datatype, shape, count, tensor.contents)
    return inputs


def _from_contents(name: str, datatype: str, shape: list[int], count: int, contents) -> np.ndarray:
    if datatype not in CONTENTS:
        raise bad(f"input '{name}': {datatype} travels only in raw_input_contents")
    values = list(getattr(contents, CONTENTS[datatype]))
    if len(values) != count:
        raise bad(f"input '{name}': shape {shape} needs {count} elements, contents has {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    return np.array(values, dtype=DTYPES[datatype]).reshape(shape)
