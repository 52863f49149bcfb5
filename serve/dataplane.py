"""Protocol decoding and encoding, without HTTP types: bytes in, numpy, bytes out.

Three request formats reach the same model:

- the friendly API (`/v1/classify/{task}`): raw pixels, a base64 or uploaded image, or review
  text; preprocessing from the manifest turns them into model inputs; answers are top-k
  human labels;
- the Open Inference Protocol / KServe V2 (`/v2/models/{name}/infer`), JSON or with the
  binary tensor data extension: the model's own input tensor in, its output tensor out;
- TensorFlow Serving's REST API (`/v1/models/{name}[/versions/{n}|/labels/{l}]`): `:predict`
  (`instances` or `inputs`), `:classify` (`examples`), status and metadata.

JSON is parsed once with orjson and converted to numpy in one call; there is no per-number
validation object. Every malformed request raises a `serve.errors` error saying what was
wrong and what is expected.
"""
from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from dataclasses import dataclass

import numpy as np
import orjson

from serve.errors import InvalidInput, InvalidJSON, TooManyRows
from serve.images import INVERT_CHOICES, decode_image
from serve.model import NUMPY_DTYPES, V2_DATATYPES, ServedModel
from serve.responses import SERVER_NAME, SERVER_VERSION
from serve.triton_config import output_labels
from core.preprocessing import PreprocessingError

MAX_K = 1000
# Values one V2 input may declare: far above any request the body limit lets through (8 MiB of
# FP32 is 2M values), and small enough that a shape's product never reaches an allocation.
MAX_TENSOR_VALUES = 1 << 28
MAX_TEXT_CHARS = 100_000  # the longest IMDB review has ~14k characters


# orjson holds the event loop for a whole parse: 45 ms for 7 MB of short texts, 99 ms for 3,000
# images as pixel lists, every one of them refused after parsing (max_request_rows). A body this
# large is first measured with byte counts (~0.5 ms per MB) of the JSON strings and numbers it
# must hold, against what max_request_rows allows. Below it, a parse costs well under 1 ms.
SIZE_CHECK_BYTES = 64 * 1024
KEYS_SLACK = 64  # object keys and the odd string beside the rows


class JsonSizeCheck:
    """Refuse, before parsing, a JSON body holding more rows than the model takes; fed the
    whole body, or chunk by chunk as it arrives (the fast path), so that no single count holds
    the event loop and an oversized body is refused before it is all read.

    Strings: at least (quotes - escaped quotes) / 2 of them, each text one row. `numbers`
    (a numeric tensor or pixels, no strings but keys): at most as many values as commas + 1,
    bounded by max_request_rows rows of the model's input size.
    """

    def __init__(self, model: ServedModel, numbers: bool):
        self.max_rows = model.max_rows
        self.per_row = math.prod(d for d in model.input.shape[1:] if d > 0) if numbers else 0
        self.quotes = self.escaped = self.commas = 0
        self.backslash_at_end = False

    def feed(self, chunk: bytes) -> None:
        self.quotes += chunk.count(b'"')
        self.escaped += chunk.count(b'\\"') + (self.backslash_at_end and chunk[:1] == b'"')
        self.backslash_at_end = chunk[-1:] == b"\\"
        strings = (self.quotes - self.escaped) // 2
        if strings > self.max_rows + KEYS_SLACK:
            raise TooManyRows(f"the request holds at least {strings:,} JSON strings",
                              expected=f"at most {self.max_rows} texts per request (send more "
                                       "requests; the server batches them)")
        if self.per_row:
            self.commas += chunk.count(b",")
            if self.commas + 1 > self.max_rows * self.per_row + KEYS_SLACK:
                raise TooManyRows(f"the request holds more than {self.commas:,} numbers",
                                  expected=f"at most {self.max_rows} rows of {self.per_row:,} "
                                           "values per request (send more requests; the "
                                           "server batches them)")


def check_json_size(model: ServedModel, body: bytes, numbers: bool) -> None:
    """JsonSizeCheck on a whole body, from SIZE_CHECK_BYTES up."""
    if len(body) >= SIZE_CHECK_BYTES:
        JsonSizeCheck(model, numbers).feed(body)


def parse_json(body: bytes) -> dict:
    if not body:
        raise InvalidJSON("the request body is empty", expected="a JSON object")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        hint = ""
        if any(word in body for word in (b"NaN", b"Infinity", b"e999")):
            hint = "; NaN and infinity are not JSON numbers and no model input may hold them"
        raise InvalidJSON(f"the request body is not valid JSON ({e}){hint}",
                          expected="a JSON object with finite numbers") from None
    if not isinstance(doc, dict):
        raise InvalidJSON(f"the request body is a JSON {type(doc).__name__}",
                          expected="a JSON object")
    return doc


def _numeric_array(value, what: str) -> np.ndarray:
    """Nested JSON lists -> numpy in one call; rejects ragged lists, strings, null, booleans."""
    try:
        arr = np.asarray(value)
    except ValueError:
        raise InvalidInput(f"{what} is a ragged nested list",
                           expected="a rectangular nested list of numbers") from None
    if arr.dtype.kind not in "iuf":
        raise InvalidInput(f"{what} contains non-numbers ({arr.dtype})",
                           expected="numbers only (no strings, null or booleans)")
    return arr


# -- friendly API ------------------------------------------------------------------------
EXAMPLE_HINTS = {
    "image": '{"pixels": <height x width [x channels] numbers 0..255, or a list of them>} or '
             '{"image_base64": "<PNG/JPEG>"} or a multipart "file" upload',
    "text": '{"text": "<review>"} or {"texts": ["<review>", ...]}',
}


def friendly_size_check(model: ServedModel) -> JsonSizeCheck:
    """The size check of a /v1/classify JSON body (texts count as strings, pixels as numbers)."""
    return JsonSizeCheck(model, numbers=model.kind == "image")


def friendly_json_inputs(model: ServedModel, body: bytes, invert: str = "auto",
                         size_checked: bool = False) -> tuple[np.ndarray, bool]:
    """A /v1/classify JSON body -> (model inputs, whether it was a single example);
    `size_checked`: the fast path ran `friendly_size_check` on it as it arrived."""
    if not size_checked:
        check_json_size(model, body, numbers=model.kind == "image")
    if model.kind == "image" and model.preprocess.channels == 1:
        pixels = whole_number_pixels(body, model.preprocess.height, model.preprocess.width)
        if pixels is not None:
            return _preprocess(model, pixels), pixels.ndim == 2
    return friendly_inputs(model, parse_json(body), invert)


# The body nearly every image client sends: {"pixels": [[0,12,...],...]}, whole numbers, one
# image or a batch. orjson + np.asarray build 784 Python ints per image and read them back
# (27 us); numpy reads the numbers straight from the bytes in 16 us. This reader takes only
# bodies that the general path reads to the very same array; for anything else (floats,
# other keys, leading zeros, values over 255, other shapes, malformed JSON) it returns None
# and the general path answers, with its error messages.
_PIXELS_KEY = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"pixels"[ \t\n\r]*:')
_DIGITS = b"0123456789"
_JSON_WHITESPACE = b" \t\n\r"


@functools.lru_cache(maxsize=4)
def _image_skeleton(height: int, width: int) -> bytes:
    """What is left of a height x width nested list without its numbers: [[,,...],[,,...],...]."""
    row = b"[" + b"," * (width - 1) + b"]"
    return b"[" + b",".join([row] * height) + b"]"


def whole_number_pixels(body: bytes, height: int, width: int) -> np.ndarray | None:
    """(height, width) or (N, height, width) int64 pixels from a `{"pixels": ...}` body of
    whole numbers 0..255; None for any other body."""
    key = _PIXELS_KEY.match(body)
    end = body.rfind(b"}")
    if key is None or end < 0 or body[end + 1:].strip(_JSON_WHITESPACE):
        return None
    text = body[key.end():end]
    non_digits = text.translate(None, _DIGITS)
    # Brackets and commas alone must be exactly one image's or a batch's. Any other character
    # (quotes, dots, signs, letters) fails this too, as do ragged rows and stray commas.
    skeleton = non_digits.translate(None, _JSON_WHITESPACE)
    image = _image_skeleton(height, width)
    if skeleton == image:
        shape = (height, width)
    else:
        count = (len(skeleton) - 1) // (len(image) + 1)
        if count < 1 or skeleton != b"[" + b",".join([image] * count) + b"]":
            return None
        shape = (count, height, width)
    # numpy skips whitespace around commas and stops at whitespace inside a number ("1 2")
    # or at an empty one ("1,,2"): a ValueError in numpy 2, a short array in numpy 1.
    try:
        values = np.fromstring(text.translate(None, b"[]"), dtype=np.int64, sep=",")
    except ValueError:
        return None
    if values.size != math.prod(shape) or values.max() > 255:
        return None
    # JSON numbers have no leading zeros ("007" is invalid JSON): with every value in 0..255,
    # the body must hold exactly the digits of the values written plainly.
    plain_digits = (values.size + int(np.count_nonzero(values >= 10))
                    + int(np.count_nonzero(values >= 100)))
    if len(text) - len(non_digits) != plain_digits:
        return None
    return values.reshape(shape)


def friendly_inputs(model: ServedModel, doc: dict, invert: str = "auto") -> tuple[np.ndarray, bool]:
    """A parsed /v1/classify body -> (model inputs, whether it was a single example)."""
    kind = model.kind
    if kind == "text":
        ids, single = _text_inputs(model, doc)
        # The tokenizer gives int32; an exported model may declare int64 ids.
        return ids.astype(model.input.dtype, copy=False), single
    if kind != "image":
        raise InvalidInput(f"task {model.name!r} takes {kind} inputs, which the friendly API "
                           "does not serve", expected=f"POST /v2/models/{model.name}/infer")
    if "pixels" in doc:
        pixels = _numeric_array(doc["pixels"], "pixels")
        channels = model.preprocess.channels
        if channels == 1 and pixels.ndim == 3 and pixels.shape[-1] == 1 and pixels.shape[0] != 1:
            pixels = pixels[..., 0]  # one (28, 28, 1) image, channel last
        return _preprocess(model, pixels), pixels.ndim == (2 if channels == 1 else 3)
    if "image_base64" in doc:
        return image_inputs(model, _b64decode(doc["image_base64"]), invert), True
    raise InvalidInput(f"no image in the request (keys: {', '.join(sorted(doc)) or 'none'})",
                       expected=EXAMPLE_HINTS["image"])


def image_inputs(model: ServedModel, data: bytes, invert: str = "auto") -> np.ndarray:
    p = model.preprocess
    return _preprocess(model, decode_image(data, p.height, p.width, p.channels, model.name,
                                           invert))


def _preprocess(model: ServedModel, raw: np.ndarray) -> np.ndarray:
    """Image pixels -> model inputs; the row count is checked before any work on them."""
    one_image_ndim = 2 if model.preprocess.channels == 1 else 3
    model.check_rows(len(raw) if raw.ndim > one_image_ndim else 1, "pixels")
    try:
        x = model.preprocess(raw)
    except PreprocessingError as e:
        raise InvalidInput(str(e), expected=EXAMPLE_HINTS[model.kind]) from None
    if len(x) == 0:
        raise InvalidInput("the batch is empty", expected="at least one example")
    return x


def _b64decode(value) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"image_base64 is a {type(value).__name__}",
                           expected="a base64 string (a data: URL is fine)")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"image_base64 is not valid base64 ({e})",
                           expected="standard base64 of a PNG or JPEG file") from None


def _text_inputs(model: ServedModel, doc: dict) -> tuple[np.ndarray, bool]:
    if "text" in doc:
        texts, single = [doc["text"]], True
    elif "texts" in doc:
        texts, single = doc["texts"], False
        if not isinstance(texts, list) or not texts:
            raise InvalidInput("texts must be a non-empty list of strings",
                               expected=EXAMPLE_HINTS["text"])
    else:
        raise InvalidInput(f"no text in the request (keys: {', '.join(sorted(doc)) or 'none'})",
                           expected=EXAMPLE_HINTS["text"])
    model.check_rows(len(texts), "texts")
    for i, t in enumerate(texts):
        what = "text" if single else f"texts[{i}]"
        if not isinstance(t, str):
            raise InvalidInput(f"{what} is not a string but a JSON {type(t).__name__}",
                               expected="a string")
        if not t.strip():
            raise InvalidInput(f"{what} is empty", expected="a review with at least one word")
        if len(t) > MAX_TEXT_CHARS:
            raise InvalidInput(f"{what} has {len(t):,} characters",
                               expected=f"at most {MAX_TEXT_CHARS:,} characters (the model "
                               f"reads only the first {model.preprocess.max_length} tokens)")
    return model.preprocess(texts), single


def classify_params(query) -> tuple[int, str]:
    """`k` (1..1000, default 3) and `invert` (auto|true|false) from the query string."""
    k_text = query.get("k", "3")
    # ASCII digits only ("²".isdigit() is true) and few of them (int() refuses > 4300 digits).
    if not (k_text.isascii() and k_text.isdigit() and len(k_text) <= 6) \
            or not 1 <= int(k_text) <= MAX_K:
        raise InvalidInput(f"query parameter k={k_text!r} is not valid",
                           expected=f"an integer from 1 to {MAX_K}")
    invert = query.get("invert", "auto")
    if invert not in INVERT_CHOICES:
        raise InvalidInput(f"query parameter invert={invert!r} is not valid",
                           expected=" | ".join(INVERT_CHOICES))
    return int(k_text), invert


def top_k(model: ServedModel, probabilities: np.ndarray, k: int) -> list[list[dict]]:
    # Plain Python on .tolist(): for 2..24 classes it is several times faster than numpy.
    labels = model.labels
    ranked = []
    for row in probabilities.tolist():
        order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]
        ranked.append([{"label": labels[c], "class_id": c, "probability": round(row[c], 6)}
                       for c in order])
    return ranked


def classify_answer(model: ServedModel, probabilities: np.ndarray, k: int, single: bool,
                    timing_ms: dict) -> bytes:
    ranked = top_k(model, probabilities, k)
    answer = {"task": model.name, "variant": model.variant.name, "model": model.variant.model}
    if single:
        answer["top_k"] = ranked[0]
    else:
        answer["results"] = [{"top_k": r} for r in ranked]
    answer["timing_ms"] = timing_ms
    return orjson.dumps(answer)


# -- Open Inference Protocol (KServe V2) -------------------------------------------------
# Open Inference Protocol extensions the server speaks, in its metadata (HTTP and gRPC alike).
V2_EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics",
                 "model_repository")


def v2_server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(V2_EXTENSIONS)}


@dataclass(frozen=True)
class V2Request:
    inputs: np.ndarray
    id: str | None
    binary_output: bool
    classification: int | None = None  # top k labels instead of the output tensor


def v2_model_metadata(model: ServedModel, versions: list[ServedModel]) -> dict:
    """Metadata of one version of a model; `versions`: all of its versions (ModelRepository)."""
    return {"name": model.name, "versions": [m.version for m in versions],
            "platform": model.platform,
            "inputs": [model.input.as_dict()], "outputs": [model.output.as_dict()]}


def v2_decode(model: ServedModel, body: bytes, header_length: int | None) -> V2Request:
    """Decode an infer request; with `header_length`, tensors follow the JSON header as bytes."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {header_length} does not fit a "
                               f"body of {len(body)} bytes",
                               expected="the byte length of the JSON header")
        check_json_size(model, body[:header_length], numbers=True)
        doc, binary = parse_json(body[:header_length]), memoryview(body)[header_length:]
    else:
        check_json_size(model, body, numbers=True)
        doc, binary = parse_json(body), memoryview(b"")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput("the request must have exactly one input tensor",
                           expected=f"inputs: [{{name: {model.input.name!r}, shape, datatype, "
                           "data}]")
    tensor = inputs[0]
    if tensor.get("name") != model.input.name:
        raise InvalidInput(f"unknown input {tensor.get('name')!r} for model {model.name!r}",
                           expected=f"input name {model.input.name!r}")
    for where, params in (("the request", doc.get("parameters")),
                          ("the input", tensor.get("parameters"))):
        if params is not None and not isinstance(params, dict):
            raise InvalidInput(f"parameters of {where} is a {type(params).__name__}",
                               expected='an object, e.g. {"binary_data_output": true}')
    outputs = doc.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise InvalidInput(f"outputs is a {type(outputs).__name__}",
                           expected=f'a list, e.g. [{{"name": {model.output.name!r}}}]')
    x = _v2_tensor(tensor, binary)
    want_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    classification = None
    for out in outputs or []:
        if not isinstance(out, dict) or out.get("name") != model.output.name:
            name = out.get("name") if isinstance(out, dict) else out
            raise InvalidInput(f"unknown output {name!r} for model {model.name!r}",
                               expected=f"output name {model.output.name!r}")
        params = out.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidInput(f"parameters of output {out.get('name')!r} is a "
                               f"{type(params).__name__}",
                               expected='an object, e.g. {"binary_data": true}')
        want_binary = bool((params or {}).get("binary_data", want_binary))
        if params and "classification" in params:
            classification = v2_classification_count(params["classification"])
    request_id = doc.get("id")
    return V2Request(model.check_tensor(x, f"input {model.input.name!r}"),
                     str(request_id) if request_id is not None else None, want_binary,
                     classification)


def _v2_tensor(tensor: dict, binary: memoryview) -> np.ndarray:
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    dtype, count = v2_tensor_layout(datatype, shape)
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != len(binary) or size != count * dtype.itemsize:
            raise InvalidInput(f"binary_data_size {size} does not match the {len(binary)} bytes "
                               f"after the header or shape {shape} of {datatype}",
                               expected=f"{count * dtype.itemsize} bytes")
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    if "data" not in tensor:
        raise InvalidInput("the input has neither data nor parameters.binary_data_size",
                           expected="data (JSON) or binary tensor data")
    return v2_tensor_from_values(_numeric_array(tensor["data"], "data"), dtype, shape, count)


def v2_tensor_layout(datatype, shape) -> tuple[np.dtype, int]:
    """A V2 tensor's declared datatype and shape, checked -> (numpy dtype, value count). Every
    transport (HTTP JSON, binary extension, gRPC) checks them here before reading any data."""
    if datatype not in NUMPY_DTYPES:
        raise InvalidInput(f"datatype {datatype!r} is not supported",
                           expected=f"one of {', '.join(sorted(NUMPY_DTYPES))}")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidInput(f"shape {shape!r} is not a list of non-negative integers",
                           expected="e.g. [1, 28, 28, 1]")
    count = math.prod(shape)  # exact: np.prod wraps around
    if count > MAX_TENSOR_VALUES:
        raise InvalidInput(f"shape {shape} holds {count:,} values",
                           expected=f"at most {MAX_TENSOR_VALUES:,} values per input")
    return NUMPY_DTYPES[datatype], count


def v2_tensor_from_values(arr: np.ndarray, dtype: np.dtype, shape: list[int], count: int,
                          what: str = "data") -> np.ndarray:
    """Numbers sent as values (JSON `data`, gRPC typed contents) -> the tensor that
    `v2_tensor_layout` checked: integer datatypes take no fractions, the count must match the
    shape, and integers must fit the datatype (an exact cast, never a wrap-around)."""
    if dtype.kind in "iu" and arr.dtype.kind == "f":
        raise InvalidInput(f"{what} holds fractional numbers for datatype {V2_DATATYPES[dtype]}",
                           expected="integers")
    if arr.size != count:
        raise InvalidInput(f"{what} has {arr.size} values but shape {shape} needs {count}",
                           expected=f"{count} values in row-major order")
    return _cast_exact(arr, dtype, what).reshape(shape)


def _cast_exact(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """`arr` as `dtype`, refusing integers the type cannot hold (a cast would wrap them:
    2**40 + 7 as int32 is 7)."""
    if dtype.kind in "iu" and arr.dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidInput(f"{what} holds integers from {arr.min()} to {arr.max()}",
                               expected=f"integers from {info.min} to {info.max} "
                                        f"({dtype.name})")
    return arr.astype(dtype, copy=False)


def v2_classification_count(value) -> int:
    """The classification extension's output parameter: how many top classes to return."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise InvalidInput(f"output parameter classification={value!r} is not valid",
                           expected=f"an integer from 1 to {MAX_K} (the number of top classes)")
    return value


def v2_classification(model: ServedModel, outputs: np.ndarray, k: int) -> list[list[str]]:
    """Triton's classification extension: per row, the top min(k, columns) columns of the
    output tensor as "<value>:<column>:<label>", best first, labels one per column
    (`triton_config.output_labels`, the exported labels.txt). What Triton answers for the
    exported repository, so a client sees no difference: a one-column sigmoid output (imdb)
    classifies as its one column, p(positive), e.g. "0.030000:0:positive". /v1/classify is
    where such a model ranks its two classes [1 - p, p]."""
    labels = output_labels(model.variant)
    ranked = []
    for row in np.asarray(outputs, dtype=np.float32).tolist():
        order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]
        ranked.append([f"{row[c]:f}:{c}:{labels[c]}" for c in order])
    return ranked


def bytes_tensor(strings: list[list[str]]) -> bytes:
    """A BYTES tensor in the binary tensor data extension: each element as a 4-byte
    little-endian length, then its UTF-8 bytes, in row-major order."""
    out = bytearray()
    for row in strings:
        for s in row:
            data = s.encode()
            out += len(data).to_bytes(4, "little")
            out += data
    return bytes(out)


def _v2_classified(model: ServedModel, request: V2Request, outputs: np.ndarray,
                   answer: dict) -> tuple[bytes, int | None]:
    rows = v2_classification(model, outputs, request.classification)
    tensor = answer["outputs"][0]
    tensor.update(datatype="BYTES", shape=[len(rows), len(rows[0]) if rows else 0])
    if not request.binary_output:
        tensor["data"] = [s for row in rows for s in row]
        return orjson.dumps(answer), None
    raw = bytes_tensor(rows)
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps(answer)
    return header + raw, len(header)


def v2_encode(model: ServedModel, request: V2Request, outputs: np.ndarray) -> tuple[bytes, int | None]:
    """Response body, and the JSON header length when tensors follow it as binary data."""
    outputs = np.ascontiguousarray(outputs, dtype=np.float32)
    tensor = {"name": model.output.name, "datatype": V2_DATATYPES[outputs.dtype],
              "shape": list(outputs.shape)}
    answer = {"model_name": model.name, "model_version": model.version, "outputs": [tensor]}
    if request.id is not None:
        answer["id"] = request.id
    if request.classification is not None:
        return _v2_classified(model, request, outputs, answer)
    if not request.binary_output:
        tensor["data"] = outputs.ravel().tolist()
        return orjson.dumps(answer), None
    raw = outputs.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps(answer)
    return header + raw, len(header)


# -- TensorFlow Serving REST -------------------------------------------------------------
TFS_SIGNATURE = "serving_default"  # the one signature each model has
# numpy dtype -> TensorFlow's DataType name, as TF Serving's metadata spells it.
TF_DATATYPES = {np.dtype(np.float32): "DT_FLOAT", np.dtype(np.float64): "DT_DOUBLE",
                np.dtype(np.float16): "DT_HALF", np.dtype(np.int32): "DT_INT32",
                np.dtype(np.int64): "DT_INT64", np.dtype(np.uint8): "DT_UINT8"}


def _tfserving_doc(body: bytes) -> dict:
    doc = parse_json(body)
    signature = doc.get("signature_name", TFS_SIGNATURE)
    if signature != TFS_SIGNATURE:
        raise InvalidInput(f"unknown signature_name {signature!r}", expected=TFS_SIGNATURE)
    return doc


def tfserving_decode(model: ServedModel, body: bytes) -> tuple[np.ndarray, str]:
    """`{"instances": [...]}` (row format) or `{"inputs": ...}` (columnar) -> (inputs, key)."""
    check_json_size(model, body, numbers=True)
    doc = _tfserving_doc(body)
    name = model.input.name
    if "instances" in doc and "inputs" in doc:
        raise InvalidInput("the request has both instances and inputs",
                           expected='one of {"instances": [...]} (row format) or '
                                    '{"inputs": ...} (columnar)')
    if "instances" in doc:
        rows, field, key = doc["instances"], "instances", "predictions"
        if not isinstance(rows, list) or not rows:
            raise InvalidInput("instances must be a non-empty list",
                               expected="one model input per instance")
        if isinstance(rows[0], dict):
            rows = [_named(r, name) for r in rows]
    elif "inputs" in doc:
        rows, field, key = doc["inputs"], "inputs", "outputs"
        if isinstance(rows, dict):
            rows = _named(rows, name)
    else:
        raise InvalidInput(f"no instances or inputs in the request (keys: {', '.join(doc)})",
                           expected='{"instances": [...]} or {"inputs": ...}')
    arr = _numeric_array(rows, field)
    if model.input.dtype.kind in "iu" and arr.dtype.kind == "f":
        raise InvalidInput("the inputs hold fractional numbers", expected="integer token ids")
    return model.check_tensor(_cast_exact(arr, model.input.dtype, field)), key


def _named(value, name: str):
    if not isinstance(value, dict) or set(value) != {name}:
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise InvalidInput(f"named inputs {keys} do not match the model",
                           expected=f"exactly one input named {name!r}")
    return value[name]


def tfserving_classify_decode(model: ServedModel, body: bytes) -> np.ndarray:
    """`:classify`'s `{"examples": [{"<input>": [...]}, ...], "context": {...}}` -> inputs.

    Each example holds the model's one input as a feature: a flat list of values (a
    tf.Example feature is a flat list) or the nested example; `context` features are shared
    by every example and may not appear in them, as in TF Serving."""
    check_json_size(model, body, numbers=True)
    doc = _tfserving_doc(body)
    name = model.input.name
    form = f'{{"examples": [{{"{name}": [<values>]}}, ...]}}'
    examples, context = doc.get("examples"), doc.get("context") or {}
    if not isinstance(examples, list) or not examples:
        raise InvalidInput("examples must be a non-empty list", expected=form)
    if not isinstance(context, dict):
        raise InvalidInput(f"context is a JSON {type(context).__name__}",
                           expected="an object of features shared by every example")
    model.check_rows(len(examples), "examples")
    rows = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise InvalidInput(f"examples[{i}] is a JSON {type(example).__name__}", expected=form)
        shared = sorted(set(example) & set(context))
        if shared:
            raise InvalidInput(f"examples[{i}] repeats context feature {shared[0]!r}",
                               expected="each feature either in context or in the examples")
        rows.append(_named({**context, **example}, name))
    arr = _numeric_array(rows, "examples")
    example_shape = model.input.shape[1:]
    if arr.ndim == 2 and arr.shape[1] == math.prod(example_shape) and len(example_shape) > 1:
        arr = arr.reshape(len(rows), *example_shape)
    if model.input.dtype.kind in "iu" and arr.dtype.kind == "f":
        raise InvalidInput("the examples hold fractional numbers", expected="integer token ids")
    return model.check_tensor(_cast_exact(arr, model.input.dtype, "examples"))


def tfserving_classify_encode(model: ServedModel, probabilities: np.ndarray) -> bytes:
    """`{"results": [[[label, score], ...] per example]}`: every class in class order, as TF
    Serving's classify answers (the key its server writes)."""
    labels = model.labels
    return orjson.dumps({"results": [[[labels[c], p] for c, p in enumerate(row)]
                                     for row in probabilities.tolist()]})


def tfserving_status(models: list[ServedModel]) -> dict:
    """GetModelStatusResponse for the given versions of a model."""
    def version_status(model: ServedModel) -> dict:
        state = "AVAILABLE" if model.ready else ("LOADING" if model.error is None else "END")
        return {"version": model.version, "state": state,
                "status": {"error_code": "OK" if model.error is None else "UNKNOWN",
                           "error_message": model.error or ""}}
    return {"model_version_status": [version_status(m) for m in models]}


def tfserving_metadata(model: ServedModel) -> dict:
    """GetModelMetadataResponse: model_spec and the serving_default signature_def, dtypes as
    DT_ names and dimensions as tensor_shape dims (sizes as strings, as proto3 JSON writes
    int64; -1: any batch size)."""
    def tensor(spec) -> dict:
        return {"dtype": TF_DATATYPES[spec.dtype], "name": spec.name,
                "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in spec.shape],
                                 "unknown_rank": False}}
    signature = {"inputs": {model.input.name: tensor(model.input)},
                 "outputs": {model.output.name: tensor(model.output)},
                 "method_name": "tensorflow/serving/predict", "defaults": {}}
    return {"model_spec": {"name": model.name, "signature_name": "", "version": model.version},
            "metadata": {"signature_def": {
                "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                "signature_def": {TFS_SIGNATURE: signature}}}}
