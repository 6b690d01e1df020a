"""Request bodies -> validated items for a predictor, or a RequestError naming the problem.

This module reads jaxft's own body, {"texts": [...]}, and holds the checks every protocol shares (one text,
a [text, pair], a {"question", "context"} object); serve/hf.py and serve/v2.py read the other protocols'
bodies with the same checks and limits.

Status codes: 400 the body is not JSON (also: not UTF-8, nested deeper than Python's recursion limit) or
not a JSON object; 408 the body did not arrive within body_timeout_s; 413 the body is over max_body_bytes
or holds more than max_texts items; 422 "texts" is missing, not a list, empty, or an item has the wrong
type, is blank, is longer than max_text_chars characters or holds a lone surrogate (a "\ud800" escape:
valid JSON, but no Unicode text, and the tokenizer cannot take it).

Error bodies: jaxft's routes answer {"error": {"code", "message"}} (RequestError.body); the HF / TEI and
Open Inference Protocol routes answer {"error": message, "error_type": code} (RequestError.flat_body), the
shape huggingface_hub and tritonclient read the message from.

The Content-Type header is not checked: the body is read as JSON whatever it says (`curl -d` sends
application/x-www-form-urlencoded).
"""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_texts: int = 64
    max_text_chars: int = 5000
    body_timeout_s: float = 30.0  # the whole body must arrive within this long after the headers


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.flat: bool | None = None  # set where a route that answers jaxft's body reads another protocol's body

    def body(self) -> dict:
        """jaxft's error body."""
        return {"error": {"code": self.code, "message": self.message}}

    def flat_body(self) -> dict:
        """The error body of the HF / TEI and Open Inference Protocol routes."""
        return {"error": self.message, "error_type": self.code}


def parse_json(raw: bytes, expected: str = '{"texts": [...]}') -> dict:
    """The body as a JSON object; `expected` (the body's shape) goes into the not-an-object message."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise RequestError(400, "malformed_json", f"body is not valid JSON ({err})") from None
    except RecursionError:  # [[[[...]]]] deeper than the recursion limit: a 400 like any malformed body
        raise RequestError(400, "too_deeply_nested", "body is JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise RequestError(400, "not_an_object", f"body must be a JSON object {expected}, got a {kind_of(body)}")
    return body


def validate(body: dict, item_kind: str, limits: Limits) -> list:
    """The items of a {"texts": [...]} body, by the predictor's item kind: strings ("text": NER,
    classification, fill-mask), [text, pair] lists ("pair": pair classifiers) or {"question", "context"[, "id"]}
    objects ("question": QA)."""
    unknown = sorted(set(body) - {"texts"})
    if unknown:
        raise RequestError(422, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))}; the body is "
                                                 '{"texts": [...]} (or, on /predict, {"inputs": ..., "parameters": '
                                                 "{...}})")
    if "texts" not in body:
        raise RequestError(422, "missing_texts", 'body has no "texts" field; send {"texts": [...]}')
    texts = body["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, "texts_not_a_list", f'"texts" must be a list, got a {kind_of(texts)}')
    check_count(len(texts), '"texts"', limits)
    check = ITEM_CHECKS[item_kind]
    return [check(item, f"texts[{i}]", limits) for i, item in enumerate(texts)]


def check_count(count: int, where: str, limits: Limits) -> None:
    if count == 0:
        raise RequestError(422, "empty_texts", f"{where} is empty; send at least one item")
    if count > limits.max_texts:
        raise RequestError(413, "too_many_texts", f"{where} has {count} items; at most {limits.max_texts} per request")


def check_text(item, where: str, limits: Limits, what: str = "a string") -> str:
    if not isinstance(item, str):
        hint = " (this model reads single texts, not pairs)" if isinstance(item, list) else ""
        raise RequestError(422, "wrong_type", f"{where} must be {what}, got a {kind_of(item)}{hint}")
    if not item.strip():
        raise RequestError(422, "blank_text", f"{where} is blank")
    if len(item) > limits.max_text_chars:
        raise RequestError(422, "text_too_long", f"{where} has {len(item)} characters; at most "
                                                 f"{limits.max_text_chars}")
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate escape; the tokenizer would raise on the whole batch
        raise RequestError(422, "invalid_text", f"{where} holds a lone surrogate {item[err.start]!r} at "
                                                f"character {err.start}; send Unicode text") from None
    return item


def check_pair(item, where: str, limits: Limits) -> tuple[str, str]:
    if not (isinstance(item, list) and len(item) == 2):
        raise RequestError(422, "wrong_type", f"{where} must be a [text, pair] list of two strings (this model "
                                              f"reads sentence pairs), got a {kind_of(item)}")
    return check_text(item[0], f"{where}[0]", limits), check_text(item[1], f"{where}[1]", limits)


def check_question(item, where: str, limits: Limits) -> dict:
    if not isinstance(item, dict):
        raise RequestError(422, "wrong_type", f'{where} must be an object {{"question": ..., "context": ...}}, '
                                              f"got a {kind_of(item)}")
    extra = sorted(set(item) - {"question", "context", "id"})
    if extra:
        raise RequestError(422, "unknown_field", f"{where} has unknown field(s) {', '.join(map(repr, extra))}")
    question = check_text(item.get("question"), f"{where}.question", limits)
    context = check_text(item.get("context"), f"{where}.context", limits)
    out = {"question": question, "context": context}
    if "id" in item:
        if not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool):
            raise RequestError(422, "wrong_type", f"{where}.id must be a string or an integer")
        out["id"] = item["id"]
    return out


ITEM_CHECKS = {"text": check_text, "pair": check_pair, "question": check_question}


def kind_of(value) -> str:
    return {dict: "JSON object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)
