"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService`, the
service `tritonclient.grpc` speaks, on its own port (`Settings.grpc_port`, 8001 like Triton).

It runs in the HTTP server's process and event loop (`grpc.aio`, started and stopped by the
app's lifespan) over the same model repository, data plane checks and dynamic batcher, so a
gRPC request and an HTTP request can share one batch. Inputs come as `raw_input_contents`
(what `tritonclient.grpc` sends) or typed `contents`; outputs go back as
`raw_output_contents`, as Triton answers. Domain errors become status codes through
`GRPC_STATUS`, with the error message and what was expected as details.

RPCs with nothing real behind them in this server answer UNIMPLEMENTED with a message saying
so (`NOT_SERVED`), never made-up data.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from serve import dataplane
from serve.errors import (BodyTooLarge, InferenceFailed, InvalidArgument, InvalidInput,
                          InvalidJSON, ModelNotReady, NotFound, Overloaded, ServeError,
                          TooManyRows, Unauthorized)
from serve.metrics import ServerMetrics
from serve.repository import ModelRepository
from serve.settings import Settings
from serve.triton_config import served_model_config

log = logging.getLogger("serve.grpc")
access_log = logging.getLogger("serve.access")  # the HTTP middleware's access log

SERVICE = "inference.GRPCInferenceService"

class NotServed(ServeError):
    """An RPC of the service that this server does not implement."""

    code = "not_implemented"


# Domain error -> gRPC status, the counterpart of serve.errors.HTTP_STATUS (the first class
# of an error's MRO found here wins). Overloaded is UNAVAILABLE, retryable, as Triton answers
# a full queue; too many rows is INVALID_ARGUMENT, as Triton answers a batch over its maximum.
GRPC_STATUS: dict[type[ServeError], grpc.StatusCode] = {
    NotServed: grpc.StatusCode.UNIMPLEMENTED,
    InvalidJSON: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    TooManyRows: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,  # unknown or unloaded model, unknown version
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.UNAVAILABLE,
    BodyTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    InferenceFailed: grpc.StatusCode.INTERNAL,
    ServeError: grpc.StatusCode.INTERNAL,
}

# Typed contents field of each datatype the models take (Triton's mapping). FP16 has none:
# it travels as raw_input_contents only. The numpy type is the field's wire type, which the
# exact cast then narrows to the declared datatype (UINT8 travels as uint32).
CONTENTS = {"FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64),
            "INT32": ("int_contents", np.int32), "INT64": ("int64_contents", np.int64),
            "UINT8": ("uint_contents", np.uint32)}

# RPCs of the service without a real counterpart here -> why, for the UNIMPLEMENTED answer.
_SHARED_MEMORY = "shared-memory tensors are not supported: send tensors in the request"
NOT_SERVED = {
    "ModelStreamInfer": "streaming (decoupled) inference is not served: use ModelInfer",
    "SystemSharedMemoryStatus": _SHARED_MEMORY, "SystemSharedMemoryRegister": _SHARED_MEMORY,
    "SystemSharedMemoryUnregister": _SHARED_MEMORY, "CudaSharedMemoryStatus": _SHARED_MEMORY,
    "CudaSharedMemoryRegister": _SHARED_MEMORY, "CudaSharedMemoryUnregister": _SHARED_MEMORY,
    "TraceSetting": "tracing is not supported",
    "LogSettings": "log settings are fixed at start (--log-level, --access-log)",
}

# RPCs that need no API key, like the HTTP health probes (a load balancer has no token).
PUBLIC_RPCS = frozenset({f"/{SERVICE}/ServerLive", f"/{SERVICE}/ServerReady"})


def grpc_status(error: ServeError) -> grpc.StatusCode:
    return next(GRPC_STATUS[c] for c in type(error).__mro__ if c in GRPC_STATUS)


def error_details(error: ServeError) -> str:
    """The status details: what was wrong and what is accepted (never a path or a trace)."""
    return f"{error.message}; expected {error.expected}" if error.expected else error.message


def _rpc(name: str, model_field: str | None = None):
    """The error boundary and metrics of one RPC: domain errors become their status code, a
    bug becomes INTERNAL without its text (logged with the traceback), and every call is
    counted as route `grpc:<name>` with the status code's name. Server faults are always
    logged, every call with the access log on (as on HTTP)."""
    route = f"grpc:{name}"

    def wrap(method):
        @functools.wraps(method)
        async def handler(self: "InferenceService", request, context):
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await method(self, request, context)
            except ServeError as e:
                code = grpc_status(e)
                await context.abort(code, error_details(e),
                                    trailing_metadata=(("serve-error-code", e.code),))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the client went away
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", route)
                await context.abort(code, "internal error (see the server log)")
            finally:
                model = getattr(request, model_field) if model_field else "-"
                model = model if model in self.repo.names else "-"  # bounded label values
                seconds = time.perf_counter() - start
                self.metrics.observe_request(model, route, code.name, seconds)
                if self.access_log or code is grpc.StatusCode.INTERNAL:
                    access_log.log(logging.ERROR if code is grpc.StatusCode.INTERNAL
                                   else logging.INFO, "request",
                                   extra={"fields": {"rpc": route, "status": code.name,
                                                     "ms": round(seconds * 1e3, 3),
                                                     "model": model}})
        return handler
    return wrap


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repo: ModelRepository, metrics: ServerMetrics, access_log: bool = False):
        self.repo = repo
        self.metrics = metrics
        self.access_log = access_log

    # Health and metadata ------------------------------------------------------------------
    @_rpc("ServerLive")
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc("ServerReady")
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.repo.ready)

    @_rpc("ModelReady", "name")
    async def ModelReady(self, request, context):
        # The plain form describes the default version, as the HTTP route does.
        model = self.repo.get(request.name, request.version, split=False)
        return service_pb2.ModelReadyResponse(ready=model.ready)

    @_rpc("ServerMetadata")
    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(dataplane.v2_server_metadata(),
                                     service_pb2.ServerMetadataResponse())

    @_rpc("ModelMetadata", "name")
    async def ModelMetadata(self, request, context):
        model = self.repo.get(request.name, request.version, split=False)
        model.require_ready()
        return json_format.ParseDict(
            dataplane.v2_model_metadata(model, self.repo.versions(request.name)),
            service_pb2.ModelMetadataResponse())

    # Inference ----------------------------------------------------------------------------
    @_rpc("ModelInfer", "model_name")
    async def ModelInfer(self, request, context):
        # Without a version, the traffic split picks one (as on the HTTP route).
        model = self.repo.get(request.model_name, request.model_version, split=True)
        model.require_ready()
        x = infer_inputs(model, request)
        classification = requested_classification(model, request)
        raw, _ = await self.repo.infer(model, x)
        return infer_response(model, request, raw, classification)

    # Triton's extensions: configuration, statistics, model repository ------------------------
    @_rpc("ModelConfig", "name")
    async def ModelConfig(self, request, context):
        model = self.repo.get(request.name, request.version, split=False)
        model.require_ready()
        config = json_format.ParseDict(served_model_config(model, self.repo.settings),
                                       model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    @_rpc("ModelStatistics", "name")
    async def ModelStatistics(self, request, context):
        # No name: every version of every loaded model; a name without a version: its versions.
        if not request.name:
            models = [m for name in self.repo.models for m in self.repo.versions(name)]
        elif not request.version:
            models = self.repo.versions(request.name)
        else:
            models = [self.repo.get(request.name, request.version)]
        stats = [self.repo.statistics.triton(m.name, m.version) for m in models]
        return json_format.ParseDict({"model_stats": stats},
                                     service_pb2.ModelStatisticsResponse())

    @_rpc("RepositoryIndex")
    async def RepositoryIndex(self, request, context):
        # One repository: repository_name selects nothing here.
        return json_format.ParseDict({"models": self.repo.index(ready=request.ready)},
                                     service_pb2.RepositoryIndexResponse())

    @_rpc("RepositoryModelLoad", "model_name")
    async def RepositoryModelLoad(self, request, context):
        refused = sorted(k for k in request.parameters if k == "config" or k.startswith("file:"))
        if refused:
            raise InvalidArgument(f"load parameter {refused[0]!r} is not supported",
                                  expected=f"no parameters: a model's versions come from "
                                           f"{request.model_name}/versions.json or "
                                           f"{request.model_name}/selected.json")
        await self.repo.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc("RepositoryModelUnload", "model_name")
    async def RepositoryModelUnload(self, request, context):
        # unload_dependents: no model here has dependents (no ensembles), so it changes nothing.
        await self.repo.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


def _not_served(name: str, why: str):
    @_rpc(name)
    async def rpc(self, request, context):
        raise NotServed(f"{name} is not implemented by this server: {why}")
    return rpc


for _name, _why in NOT_SERVED.items():
    setattr(InferenceService, _name, _not_served(_name, _why))


def infer_inputs(model, request: service_pb2.ModelInferRequest) -> np.ndarray:
    """The model input tensor of a ModelInfer request, checked like the HTTP V2 route's:
    datatype, shape and value count (dataplane.v2_tensor_layout), exact integer casts, then
    the model's own dtype, shape, row and value-range checks."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"the request has {len(request.inputs)} input tensors",
                           expected=f"exactly one, named {model.input.name!r}")
    tensor = request.inputs[0]
    what = f"input {model.input.name!r}"
    if tensor.name != model.input.name:
        raise InvalidInput(f"unknown input {tensor.name!r} for model {model.name!r}",
                           expected=f"input name {model.input.name!r}")
    shape = list(tensor.shape)
    dtype, count = dataplane.v2_tensor_layout(tensor.datatype, shape)
    # Refuse a batch over the row limit before reading its values.
    if len(shape) == len(model.input.shape):
        model.check_rows(shape[0], what)
    filled = [f.name for f, _ in tensor.contents.ListFields()]
    if request.raw_input_contents:
        if filled:
            raise InvalidInput("the input has both contents and raw_input_contents",
                               expected="one of them (tritonclient sends raw_input_contents)")
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"raw_input_contents has {len(request.raw_input_contents)} "
                               "entries for 1 input", expected="one entry per input")
        raw = request.raw_input_contents[0]
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(f"raw_input_contents has {len(raw)} bytes but shape {shape} of "
                               f"{tensor.datatype} needs {count * dtype.itemsize}",
                               expected=f"{count * dtype.itemsize} bytes, little-endian, "
                                        "row-major")
        x = np.frombuffer(raw, dtype=dtype).reshape(shape)
    else:
        field, wire = CONTENTS.get(tensor.datatype, (None, None))
        if field is None:
            raise InvalidInput(f"datatype {tensor.datatype} has no typed contents",
                               expected="its values in raw_input_contents")
        if filled != [field] and not (count == 0 and not filled):
            raise InvalidInput(f"datatype {tensor.datatype} with contents in "
                               f"{', '.join(filled) or 'no field'}",
                               expected=f"the values in contents.{field} or in "
                                        "raw_input_contents")
        values = np.array(getattr(tensor.contents, field), dtype=wire)
        x = dataplane.v2_tensor_from_values(values, dtype, shape, count, what="contents")
    return model.check_tensor(x, what)


def requested_classification(model, request: service_pb2.ModelInferRequest) -> int | None:
    """Requested outputs must be the model's (none requested: every output is sent); the
    output parameter `classification` (Triton's classification extension) asks for the top k
    classes instead of the tensor. Returns that k, or None."""
    k = None
    for out in request.outputs:
        if out.name != model.output.name:
            raise InvalidInput(f"unknown output {out.name!r} for model {model.name!r}",
                               expected=f"output name {model.output.name!r}")
        unknown = sorted(set(out.parameters) - {"classification"})
        if unknown:
            raise InvalidInput(f"output parameter {unknown[0]!r} is not supported",
                               expected="classification (the number of top classes) or none")
        if "classification" in out.parameters:
            param = out.parameters["classification"]
            choice = param.WhichOneof("parameter_choice")
            k = dataplane.v2_classification_count(getattr(param, choice) if choice else None)
    return k


def infer_response(model, request: service_pb2.ModelInferRequest, raw: np.ndarray,
                   classification: int | None) -> service_pb2.ModelInferResponse:
    """Outputs as raw_output_contents, as Triton answers: the model's tensor, or with the
    classification extension a BYTES tensor of "<value>:<column>:<label>" per row."""
    response = service_pb2.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request.id)
    if classification is None:
        outputs = np.ascontiguousarray(raw, dtype=model.output.dtype)
        response.outputs.add(name=model.output.name, datatype=model.output.datatype,
                             shape=outputs.shape)
        response.raw_output_contents.append(outputs.tobytes())
        return response
    rows = dataplane.v2_classification(model, raw, classification)
    response.outputs.add(name=model.output.name, datatype="BYTES",
                         shape=[len(rows), len(rows[0]) if rows else 0])
    response.raw_output_contents.append(dataplane.bytes_tensor(rows))
    return response


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """`authorization: Bearer <key>` metadata on every RPC but the health probes, compared in
    constant time like the HTTP middleware. Installed only when an API key is set."""

    def __init__(self, api_key: str, metrics: ServerMetrics):
        self.expected = f"Bearer {api_key}".encode()
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        if details.method in PUBLIC_RPCS:
            return await continuation(details)
        auth = next((v for k, v in details.invocation_metadata or () if k == "authorization"),
                    None)
        if auth is not None and hmac.compare_digest(
                auth.encode() if isinstance(auth, str) else auth, self.expected):
            return await continuation(details)
        error = Unauthorized("this server needs an API key" if auth is None
                             else "the API key is wrong")
        route = "grpc:" + details.method.rpartition("/")[2]
        self.metrics.observe_request("-", route, grpc.StatusCode.UNAUTHENTICATED.name, 0.0)
        handler = await continuation(details)
        if handler is None:  # an RPC this service does not have: let grpc say UNIMPLEMENTED
            return None

        async def refuse(request_or_iterator, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, error_details(error))

        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}
        return kind[handler.request_streaming, handler.response_streaming](
            refuse, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


async def start(settings: Settings, repo: ModelRepository,
                metrics: ServerMetrics) -> grpc.aio.Server:
    """The gRPC service listening on `settings.grpc_port` on the running event loop.

    Every worker process binds the same port (SO_REUSEPORT; the kernel spreads connections
    over them), as uvicorn's workers share the HTTP socket. Messages are capped at the HTTP
    body limit, which grpc enforces with RESOURCE_EXHAUSTED before any decoding. Open
    connections are capped at max_connections as on HTTP: grpc refuses those beyond it
    (UNAVAILABLE), so idle gRPC connections cannot take every file descriptor."""
    options = [("grpc.so_reuseport", 1),
               ("grpc.max_receive_message_length", settings.max_body_bytes),
               ("grpc.max_allowed_incoming_connections", settings.max_connections)]
    interceptors = [ApiKeyInterceptor(settings.api_key, metrics)] if settings.api_key else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceService(repo, metrics, settings.access_log), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # IPv6
    address = f"{host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError:
        # Taken by a process that does not share it (SO_REUSEPORT), e.g. a Triton server.
        raise OSError(f"cannot listen for gRPC on {address}: the port is in use; choose "
                      "another with --grpc-port, or 0 to serve HTTP only") from None
    await server.start()
    log.info("gRPC inference service on %s", address)
    return server
