"""The Hugging Face Inference Endpoints and text-embeddings-inference (TEI) side of the server: request
bodies {"inputs": ..., "parameters": {...}} -> items for the predictor, and the predictor's results -> the
answers `huggingface_hub.InferenceClient` parses.

Routes (serve/app.py wires them):

POST /          HF Inference Endpoints, what InferenceClient(base_url=URL) posts to
POST /predict   the same body (TEI's route; jaxft's {"texts": [...]} body is also taken there)
POST /tokenize  TEI's: {"inputs": str | [str], "add_special_tokens": true} -> [[{id, text, special, start, stop}]]
GET  /info      TEI's model info, plus jaxft's shapes

"inputs" by model:
    NER, single-text classification, fill-mask   a string, or a list of strings (a batch; TEI's [["a"], ["b"]]
                                                 batch form too)
    pair classification                           {"text", "text_pair"}, or TEI's ["a", "b"] pair; a list of
                                                  either is a batch
    QA                                            {"question", "context"}, or a list of them

Answers for one input (a batch answers a list with one such answer per input, in order):
    NER             [{"entity_group", "score", "word", "start", "end"}]  (TokenClassificationOutputElement)
    classification  [{"label", "score"}], every label, best first (TextClassificationOutputElement); on
                    POST / one input's list comes inside one more list, [[...]], as HF Inference Endpoints
                    answer it (InferenceClient.text_classification takes element [0]); POST /predict answers
                    TEI's flat list. Multi-label: sigmoid probabilities; regression: one {"label": the
                    model's label, "score": the value}
    QA              {"answer", "score", "start", "end"}; a list of top_k of them when top_k > 1
    fill-mask       [{"score", "token", "token_str", "sequence"}] for a text with one mask token, a list of
                    such lists (one per mask, in order) for several

Parameters (in "parameters"; TEI's top-level "truncate" and "raw_scores" are read as parameters too):
    NER             aggregation_strategy: "first" only (a word takes the tag of its first sub-token and an
                    entity's score is the mean of its words', which is what `predict` does; words are
                    whitespace-separated); ignore_labels: entity types to leave out
    classification  top_k (>= 1); function_to_apply: the model's own ("softmax" single-label, "sigmoid"
                    multi-label, "none" regression); truncate: true (inputs are cut at the export's max
                    length, as `predict` does); raw_scores: false (the predictor keeps probabilities only)
    QA, fill-mask   top_k, 1 to 5 (the candidates `predict` keeps)
Any other parameter is a 422 naming it: the windowing and span-length settings (stride, doc_stride,
max_answer_len, ...) are the export's, fixed at start-up. "options" ({"wait_for_model", "use_cache"}) is
accepted and has no effect: the model is always loaded and nothing is cached.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxft.config import MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION
from jaxft.serve.inputs import Limits, RequestError, check_count, check_pair, check_question, check_text, kind_of

TOP_LEVEL = {"inputs", "parameters", "options", "truncate", "raw_scores"}
PIPELINE_TAGS = {TOKEN_CLASSIFICATION: "token-classification", SEQUENCE_CLASSIFICATION: "text-classification",
                 QUESTION_ANSWERING: "question-answering", MASKED_LM: "fill-mask"}
PARAMETERS = {TOKEN_CLASSIFICATION: ("aggregation_strategy", "ignore_labels"),
              SEQUENCE_CLASSIFICATION: ("top_k", "function_to_apply", "truncate", "raw_scores"),
              QUESTION_ANSWERING: ("top_k",), MASKED_LM: ("top_k",)}
MAX_CANDIDATES = 5  # QA's n_best and fill-mask's candidates, as the predictors return them
NATIVE_FUNCTION = {"single_label_classification": "softmax", "multi_label_classification": "sigmoid",
                   "regression": "none"}


@dataclasses.dataclass(frozen=True)
class HFRequest:
    items: list
    single: bool  # "inputs" held one input, not a list of them: the answer is that input's, not a list
    parameters: dict


def parse_request(body: dict, predictor, limits: Limits) -> HFRequest:
    unknown = sorted(set(body) - TOP_LEVEL)
    if unknown:
        raise RequestError(422, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))}; the body is "
                                                 '{"inputs": ..., "parameters": {...}}')
    if "inputs" not in body:
        raise RequestError(422, "missing_inputs", 'body has no "inputs" field; send {"inputs": ...}')
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise RequestError(422, "wrong_type", f'"options" must be an object, got a {kind_of(options)}')
    parameters = _parameters(body, predictor)
    items, single = INPUT_READERS[predictor.item_kind](body["inputs"], limits)
    return HFRequest(items, single, parameters)


def _parameters(body: dict, predictor) -> dict:
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise RequestError(422, "wrong_type", f'"parameters" must be an object, got a {kind_of(parameters)}')
    parameters = {**parameters, **{key: body[key] for key in ("truncate", "raw_scores") if key in body}}
    parameters = {key: value for key, value in parameters.items() if value is not None}
    allowed = PARAMETERS[predictor.task]
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise RequestError(422, "unsupported_parameter",
                           f"parameter(s) {', '.join(map(repr, unknown))} not supported for "
                           f"{PIPELINE_TAGS[predictor.task]} models (supported: {', '.join(allowed)}); windowing "
                           "and span settings are the export's")
    for key, value in parameters.items():
        PARAMETER_CHECKS[key](value, predictor)
    return parameters


def _top_k(value, predictor) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RequestError(422, "invalid_parameter", f"parameters.top_k must be a positive integer, got {value!r}")
    if predictor.task in (QUESTION_ANSWERING, MASKED_LM) and value > MAX_CANDIDATES:
        raise RequestError(422, "invalid_parameter", f"parameters.top_k is {value}; at most {MAX_CANDIDATES} "
                                                     "candidates are kept")


def _function_to_apply(value, predictor) -> None:
    native = NATIVE_FUNCTION[predictor.problem_type]
    if value != native:
        raise RequestError(422, "invalid_parameter", f"parameters.function_to_apply is {value!r}; this "
                                                     f"{predictor.problem_type} model answers {native!r} only")


def _truncate(value, predictor) -> None:
    if value is not True:
        raise RequestError(422, "invalid_parameter", f"truncate is {value!r}; inputs are always truncated to the "
                                                     f"export's max length ({predictor.max_length} tokens)")


def _raw_scores(value, predictor) -> None:
    if value is not False:
        raise RequestError(422, "invalid_parameter", f"raw_scores is {value!r}; the server answers probabilities "
                                                     "only")


def _aggregation_strategy(value, predictor) -> None:
    if value != "first":
        raise RequestError(422, "invalid_parameter",
                           f"parameters.aggregation_strategy is {value!r}; only 'first' is available (a word "
                           "takes its first sub-token's tag, words are grouped into entities)")


def _ignore_labels(value, predictor) -> None:
    if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
        raise RequestError(422, "invalid_parameter", "parameters.ignore_labels must be a list of strings")


PARAMETER_CHECKS = {"top_k": _top_k, "function_to_apply": _function_to_apply, "truncate": _truncate,
                    "raw_scores": _raw_scores, "aggregation_strategy": _aggregation_strategy,
                    "ignore_labels": _ignore_labels}


# ---------------------------------------------------------------------------------------------- inputs

def _batch(inputs, limits: Limits) -> list:
    check_count(len(inputs), '"inputs"', limits)
    return inputs


def _texts(inputs, limits: Limits) -> tuple[list, bool]:
    if isinstance(inputs, str):
        return [check_text(inputs, '"inputs"', limits)], True
    if not isinstance(inputs, list):
        raise RequestError(422, "wrong_type", f'"inputs" must be a string or a list of strings, got a '
                                              f"{kind_of(inputs)}")
    items = []
    for i, item in enumerate(_batch(inputs, limits)):
        if isinstance(item, list) and len(item) == 1:  # TEI's batch form [["a"], ["b"]]
            item = item[0]
        items.append(check_text(item, f"inputs[{i}]", limits))
    return items, False


def _pairs(inputs, limits: Limits) -> tuple[list, bool]:
    if isinstance(inputs, dict) or (isinstance(inputs, list) and len(inputs) == 2
                                    and all(isinstance(part, str) for part in inputs)):
        return [_pair(inputs, '"inputs"', limits)], True
    if not isinstance(inputs, list):
        raise RequestError(422, "wrong_type", '"inputs" must be {"text", "text_pair"}, a [text, pair] list, or a '
                                              "list of them (this model reads sentence pairs), got a "
                                              f"{kind_of(inputs)}")
    return [_pair(item, f"inputs[{i}]", limits) for i, item in enumerate(_batch(inputs, limits))], False


def _pair(item, where: str, limits: Limits) -> tuple[str, str]:
    if isinstance(item, dict):
        extra = sorted(set(item) - {"text", "text_pair"})
        if extra:
            raise RequestError(422, "unknown_field", f"{where} has unknown field(s) {', '.join(map(repr, extra))}")
        return check_text(item.get("text"), f"{where}.text", limits), check_text(item.get("text_pair"),
                                                                                  f"{where}.text_pair", limits)
    return check_pair(item, where, limits)


def _questions(inputs, limits: Limits) -> tuple[list, bool]:
    if isinstance(inputs, dict):
        return [check_question(inputs, '"inputs"', limits)], True
    if not isinstance(inputs, list):
        raise RequestError(422, "wrong_type", '"inputs" must be {"question": ..., "context": ...} or a list of '
                                              f"them, got a {kind_of(inputs)}")
    return [check_question(item, f"inputs[{i}]", limits) for i, item in enumerate(_batch(inputs, limits))], False


INPUT_READERS = {"text": _texts, "pair": _pairs, "question": _questions}


# ---------------------------------------------------------------------------------------------- answers

def answer(request: HFRequest, results: list[dict], predictor, *, route: str) -> Any:
    """The predictor's results (one per item) in the HF shape; route "/" or "/predict" (TEI)."""
    shape = ANSWERS[predictor.task]
    answers = [shape(result, request.parameters, predictor) for result in results]
    if not request.single:
        return answers
    # HF Inference Endpoints answer one text to classify with a list of one list (InferenceClient takes element
    # [0]); TEI's /predict answers it with the flat list
    return [answers[0]] if predictor.task == SEQUENCE_CLASSIFICATION and route == "/" else answers[0]


def _entities(result: dict, parameters: dict, predictor) -> list[dict]:
    ignored = set(parameters.get("ignore_labels", ()))
    return [{"entity_group": e["type"], "score": e["score"], "word": e["text"], "start": e["start"],
             "end": e["end"]} for e in result["entities"] if e["type"] not in ignored]


def _classes(result: dict, parameters: dict, predictor) -> list[dict]:
    if "value" in result:  # regression
        ranked = [{"label": predictor.labels[0] if predictor.labels else "LABEL_0", "score": result["value"]}]
    else:
        ranked = [{"label": label, "score": score} for label, score in
                  sorted(result["probabilities"].items(), key=lambda pair: -pair[1])]
    return ranked[:parameters.get("top_k", len(ranked))]


def _span(result: dict, parameters: dict, predictor):
    top_k = parameters.get("top_k", 1)
    if top_k == 1:
        return {"answer": result["answer"], "score": result["score"], "start": result["start"], "end": result["end"]}
    return [{"answer": e["text"], "score": e["score"], "start": e["start"], "end": e["end"]}
            for e in result["n_best"][:top_k]]


def _fills(result: dict, parameters: dict, predictor) -> list:
    per_mask = [candidates[:parameters.get("top_k", MAX_CANDIDATES)] for candidates in result["predictions"]]
    return per_mask[0] if len(per_mask) == 1 else per_mask


ANSWERS = {TOKEN_CLASSIFICATION: _entities, SEQUENCE_CLASSIFICATION: _classes, QUESTION_ANSWERING: _span,
           MASKED_LM: _fills}


# ---------------------------------------------------------------------------------------------- tokenize, info

def parse_tokenize(body: dict, limits: Limits) -> tuple[list[str], bool]:
    """(texts, add_special_tokens) of a TEI /tokenize body."""
    unknown = sorted(set(body) - {"inputs", "add_special_tokens"})
    if unknown:
        raise RequestError(422, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))}; the body is "
                                                 '{"inputs": str | [str], "add_special_tokens": bool}')
    if "inputs" not in body:
        raise RequestError(422, "missing_inputs", 'body has no "inputs" field; send {"inputs": ...}')
    add_special = body.get("add_special_tokens", True)
    if not isinstance(add_special, bool):
        raise RequestError(422, "wrong_type", f'"add_special_tokens" must be true or false, got a '
                                              f"{kind_of(add_special)}")
    texts, _ = _texts(body["inputs"], limits)
    return texts, add_special


def tokenize(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[dict]]:
    """TEI's tokens: id, text (the input's characters [start, stop); the token itself for special tokens),
    special, start and stop (character offsets; null for special tokens)."""
    # padding and truncation explicitly off: a packaged tokenizer.json may carry a fixed padding
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens, padding=False, truncation=False,
                        return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False)
    answers = []
    for text, ids, offsets, special in zip(texts, encoded["input_ids"], encoded["offset_mapping"],
                                           encoded["special_tokens_mask"]):
        tokens = []
        for token_id, (start, stop), is_special in zip(ids, offsets, special):
            if is_special:
                tokens.append({"id": token_id, "text": tokenizer.convert_ids_to_tokens(token_id), "special": True,
                               "start": None, "stop": None})
            else:
                tokens.append({"id": token_id, "text": text[start:stop], "special": False, "start": start,
                               "stop": stop})
        answers.append(tokens)
    return answers


def model_info(predictor, *, name: str, dtype: str, limits: Limits, version: str, redact: tuple[str, ...]) -> dict:
    """GET /info: TEI's fields where they apply (model_id, model_dtype, served_model_name, model_type,
    max_input_length, max_client_batch_size, version) and jaxft's (task, members, shapes, redact)."""
    labels = list(getattr(predictor, "labels", []) or [])
    label_maps = {"id2label": {str(i): label for i, label in enumerate(labels)},
                  "label2id": {label: i for i, label in enumerate(labels)}}
    model_type = {TOKEN_CLASSIFICATION: {"token_classifier": label_maps},
                  SEQUENCE_CLASSIFICATION: {"classifier": label_maps},
                  QUESTION_ANSWERING: {"question_answering": {}}, MASKED_LM: {"fill_mask": {}}}[predictor.task]
    return {"model_id": name, "served_model_name": name, "model_dtype": dtype, "model_type": model_type,
            "pipeline_tag": PIPELINE_TAGS[predictor.task], "task": predictor.task, "item_kind": predictor.item_kind,
            "max_input_length": predictor.max_length, "max_client_batch_size": limits.max_texts,
            "max_text_chars": limits.max_text_chars, "members": predictor.members,
            "batch_sizes": list(predictor.batch_sizes), "length_buckets": list(predictor.buckets),
            "redact": list(redact), "version": version}
