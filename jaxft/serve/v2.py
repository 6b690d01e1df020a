"""Open Inference Protocol v2 (KServe V2, Triton's HTTP/REST API), what `tritonclient.http` speaks.

GET  /v2                                  server metadata {"name": "jaxft", "version", "extensions"}
GET  /v2/health/live                      200 while the process serves (500 once warm-up failed)
GET  /v2/health/ready                     200 once warm-up has compiled every shape, else 503
GET  /v2/models/{name}[/versions/1]       model metadata: name, versions ["1"], platform "jaxft", inputs,
                                          outputs, parameters {task, labels}
GET  /v2/models/{name}[/versions/1]/ready 200 / 503, as /v2/health/ready
POST /v2/models/{name}[/versions/1]/infer inference

{name} is `serve --name` (default: the export folder's name); another name or version is a 404.

Inputs, all BYTES (UTF-8 text), one element per item, any shape (elements are read row-major), in the JSON
"data" or in the binary tensor extension (parameters.binary_data_size, the request's
Inference-Header-Content-Length header; tritonclient's default):
    NER, single-text classification, fill-mask   "text"
    pair classification                           "text", "text_pair"
    QA                                            "question", "context"

Outputs, one row per item:
    every model         "prediction"     BYTES [N]     the item's JSON answer, the object `predict` prints
    classification      "label" BYTES [N], "score" FP32 [N] (single-label); "probabilities" FP32 [N, K], the
                        columns in the order of the metadata's parameters.labels (single- and multi-label);
                        "value" FP32 [N] (regression)
    QA                  "answer" BYTES [N], "score" FP32 [N], "start" INT64 [N], "end" INT64 [N] (characters)
    NER with --redact   "redacted"       BYTES [N]     the text with the chosen entity types masked
The request's "outputs" picks some of them (each {"name", "parameters": {"binary_data": bool}}); without it
every output is answered, in binary when parameters.binary_data_output is true (what tritonclient asks for
when given no outputs), else in JSON. Other request parameters (priority, timeout, sequence ids) are
accepted and have no effect. Errors answer {"error": message, "error_type": code}, with 400 (a body that is
not the protocol's), 413 (too large, too many items) or 422 (an input of the wrong name, type, count or text).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import Callable

import numpy as np

from jaxft.config import QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION
from jaxft.serve.inputs import Limits, RequestError, check_count, check_question, check_text, kind_of, parse_json
from jaxft.serve.redact import redact

VERSION = "1"
PLATFORM = "jaxft"
INPUT_NAMES = {"text": ("text",), "pair": ("text", "text_pair"), "question": ("question", "context")}
NUMPY_TYPES = {"FP32": "<f4", "INT64": "<i8"}
REQUEST_FIELDS = {"id", "parameters", "inputs", "outputs"}


@dataclasses.dataclass(frozen=True)
class Output:
    name: str
    datatype: str  # BYTES, FP32 or INT64
    columns: int | None  # None: shape [N]; K: shape [N, K]
    value: Callable[[dict], object]  # one item's result -> its row


def outputs_of(predictor, redact_types: tuple[str, ...] = ()) -> list[Output]:
    outputs = [Output("prediction", "BYTES", None, lambda r: json.dumps(r, ensure_ascii=False))]
    if predictor.task == SEQUENCE_CLASSIFICATION:
        problem = predictor.problem_type
        if problem == "regression":
            outputs.append(Output("value", "FP32", None, lambda r: r["value"]))
        else:
            if problem == "single_label_classification":
                outputs += [Output("label", "BYTES", None, lambda r: r["label"]),
                            Output("score", "FP32", None, lambda r: r["score"])]
            labels = list(predictor.labels)
            outputs.append(Output("probabilities", "FP32", len(labels),
                                  lambda r: [r["probabilities"][label] for label in labels]))
    elif predictor.task == QUESTION_ANSWERING:
        outputs += [Output("answer", "BYTES", None, lambda r: r["answer"]),
                    Output("score", "FP32", None, lambda r: r["score"]),
                    Output("start", "INT64", None, lambda r: r["start"]),
                    Output("end", "INT64", None, lambda r: r["end"])]
    elif predictor.task == TOKEN_CLASSIFICATION and redact_types:
        outputs.append(Output("redacted", "BYTES", None, lambda r: redact(r, redact_types)["text"]))
    return outputs


def server_metadata(version: str) -> dict:
    return {"name": PLATFORM, "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(name: str, predictor, redact_types: tuple[str, ...] = ()) -> dict:
    labels = list(getattr(predictor, "labels", []) or [])
    return {"name": name, "versions": [VERSION], "platform": PLATFORM,
            "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in INPUT_NAMES[predictor.item_kind]],
            "outputs": [{"name": o.name, "datatype": o.datatype,
                         "shape": [-1] if o.columns is None else [-1, o.columns]}
                        for o in outputs_of(predictor, redact_types)],
            "parameters": {"task": predictor.task, "labels": labels}}


# ---------------------------------------------------------------------------------------------- requests

@dataclasses.dataclass(frozen=True)
class InferRequest:
    id: str | None
    items: list
    outputs: dict[str, bool]  # output name -> answered in binary


def parse_infer(raw: bytes, header_length: str | None, predictor, limits: Limits,
                redact_types: tuple[str, ...] = ()) -> InferRequest:
    header, binary = _split(raw, header_length)
    body = parse_json(header, '{"inputs": [{"name", "datatype", "shape", "data"}]}')
    unknown = sorted(set(body) - REQUEST_FIELDS)
    if unknown:
        raise RequestError(422, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))}; an inference "
                                                 'request has "id", "parameters", "inputs", "outputs"')
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(422, "wrong_type", f'"id" must be a string, got a {kind_of(request_id)}')
    parameters = _object(body.get("parameters", {}), '"parameters"')
    tensors = _read_inputs(body.get("inputs"), binary, INPUT_NAMES[predictor.item_kind])
    items = _items(tensors, predictor.item_kind, limits)
    available = [o.name for o in outputs_of(predictor, redact_types)]
    return InferRequest(request_id, items, _requested(body.get("outputs"), parameters, available))


def _split(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return raw, b""
    if not header_length.strip().isdigit() or int(header_length) > len(raw):
        raise RequestError(400, "bad_header_length", f"Inference-Header-Content-Length is {header_length!r}; "
                                                     f"expected the JSON header's byte count (the body has {len(raw)})")
    return raw[:int(header_length)], raw[int(header_length):]


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise RequestError(422, "wrong_type", f"{where} must be an object, got a {kind_of(value)}")
    return value


def _read_inputs(inputs, binary: bytes, names: tuple[str, ...]) -> dict[str, list[str]]:
    expected = ", ".join(repr(n) for n in names)
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(422, "missing_inputs", f'"inputs" must be a list of tensors; this model takes BYTES '
                                                  f"input(s) {expected}")
    tensors, offset = {}, 0
    for i, tensor in enumerate(inputs):
        tensor = _object(tensor, f"inputs[{i}]")
        name = tensor.get("name")
        if name not in names:
            raise RequestError(422, "unknown_input", f"inputs[{i}] is named {name!r}; this model takes BYTES "
                                                     f"input(s) {expected}")
        if name in tensors:
            raise RequestError(422, "duplicate_input", f"input {name!r} is given twice")
        where = f"input {name!r}"
        if tensor.get("datatype") != "BYTES":
            raise RequestError(422, "wrong_datatype", f"{where} has datatype {tensor.get('datatype')!r}; expected "
                                                      "'BYTES' (UTF-8 text)")
        count = _element_count(tensor.get("shape"), where)
        size = _object(tensor.get("parameters", {}), f"{where}.parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise RequestError(400, "bad_binary_size", f"{where}: binary_data_size {size!r} does not fit the "
                                                           f"{len(binary) - offset} binary bytes left")
            values = _unpack_bytes(binary[offset:offset + size], where)
            offset += size
        elif "data" in tensor:
            values = _flatten(tensor["data"], where)
        else:
            raise RequestError(422, "missing_data", f'{where} has no "data" and no parameters.binary_data_size')
        if len(values) != count:
            raise RequestError(422, "shape_mismatch", f"{where} has shape {tensor['shape']} ({count} elements) but "
                                                      f"{len(values)} elements")
        tensors[name] = values
    if offset != len(binary):
        raise RequestError(400, "bad_binary_size", f"the body has {len(binary) - offset} binary bytes no input's "
                                                   "binary_data_size accounts for")
    missing = [n for n in names if n not in tensors]
    if missing:
        raise RequestError(422, "missing_input", f"missing input(s) {', '.join(map(repr, missing))}; this model "
                                                 f"takes BYTES input(s) {expected}")
    return tensors


def _element_count(shape, where: str) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise RequestError(422, "wrong_shape", f"{where} has shape {shape!r}; expected a list of non-negative "
                                               "integers")
    return math.prod(shape)


def _flatten(data, where: str) -> list[str]:
    values, stack = [], [data]
    while stack:  # depth-first, left to right: row-major
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif isinstance(value, str):
            values.append(value)
        else:
            raise RequestError(422, "wrong_type", f"{where} holds a {kind_of(value)}; BYTES data are strings")
    return values


def _unpack_bytes(data: bytes, where: str) -> list[str]:
    """The binary BYTES layout: each element is its 4-byte little-endian length, then its bytes."""
    values, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise RequestError(400, "bad_binary_data", f"{where}: binary data ends inside an element's length")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise RequestError(400, "bad_binary_data", f"{where}: element {len(values)} declares {length} bytes; "
                                                       f"{len(data) - offset} are left")
        try:
            values.append(data[offset:offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(422, "invalid_text", f"{where}[{len(values)}] is not UTF-8 text") from None
        offset += length
    return values


def _items(tensors: dict[str, list[str]], item_kind: str, limits: Limits) -> list:
    names = INPUT_NAMES[item_kind]
    counts = {name: len(tensors[name]) for name in names}
    if len(set(counts.values())) > 1:
        raise RequestError(422, "shape_mismatch", f"inputs have different element counts {counts}; one element "
                                                  "each per item")
    count = counts[names[0]]
    check_count(count, f"input {names[0]!r}", limits)
    if item_kind == "text":
        return [check_text(v, f"input 'text'[{i}]", limits) for i, v in enumerate(tensors["text"])]
    if item_kind == "pair":
        return [(check_text(a, f"input 'text'[{i}]", limits), check_text(b, f"input 'text_pair'[{i}]", limits))
                for i, (a, b) in enumerate(zip(tensors["text"], tensors["text_pair"]))]
    return [check_question({"question": q, "context": c}, f"item {i}", limits)
            for i, (q, c) in enumerate(zip(tensors["question"], tensors["context"]))]


def _requested(outputs, parameters: dict, available: list[str]) -> dict[str, bool]:
    if outputs is None:
        binary = parameters.get("binary_data_output", False) is True
        return {name: binary for name in available}
    if not isinstance(outputs, list) or not outputs:
        raise RequestError(422, "wrong_type", '"outputs" must be a non-empty list of {"name": ...} objects')
    requested = {}
    for i, output in enumerate(outputs):
        output = _object(output, f"outputs[{i}]")
        if output.get("name") not in available:
            raise RequestError(422, "unknown_output", f"outputs[{i}] is {output.get('name')!r}; this model's outputs "
                                                      f"are {', '.join(map(repr, available))}")
        binary = _object(output.get("parameters", {}), f"outputs[{i}].parameters").get("binary_data", False)
        requested[output["name"]] = binary is True
    return requested


# ---------------------------------------------------------------------------------------------- responses

def infer_response(request: InferRequest, results: list[dict], predictor, name: str,
                   redact_types: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]]:
    """(body, headers): the JSON response, followed by the binary outputs' bytes when any is binary."""
    tensors, chunks = [], []
    for output in outputs_of(predictor, redact_types):
        if output.name not in request.outputs:
            continue
        rows = [output.value(result) for result in results]
        shape = [len(rows)] if output.columns is None else [len(rows), output.columns]
        tensor = {"name": output.name, "datatype": output.datatype, "shape": shape}
        if request.outputs[output.name]:
            data = _pack(rows, output.datatype)
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = _flat(rows) if output.columns else rows
        tensors.append(tensor)
    answer = {"model_name": name, "model_version": VERSION, "outputs": tensors}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer, ensure_ascii=False).encode("utf-8")
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       "inference-header-content-length": str(len(header))}


def _flat(rows: list) -> list:
    return [value for row in rows for value in row]


def _pack(rows: list, datatype: str) -> bytes:
    if datatype == "BYTES":
        encoded = [str(row).encode("utf-8") for row in rows]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.asarray(rows, NUMPY_TYPES[datatype]).tobytes()
