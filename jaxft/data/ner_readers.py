"""Readers for token-classification data: CoNLL-style text, JSON / JSONL / parquet tables, HF datasets.

Every reader returns ``Sentence`` objects whose ``source`` locates them ("file:line" or "file:row N",
rows counted from 0 like ``dataset[N]``) and raises ``DataError`` naming the file and line or row of any
problem. Tags are checked for syntax (``O`` or ``PREFIX-TYPE``) but kept as written; ``sentences_to_bio``
converts a corpus from its scheme to strict IOB2.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxft.data.errors import DataError
from jaxft.data.hf_objects import (class_label_names, column_names, feature_of, is_local_source, is_saved_dataset,
                                   load_split, source_label)
from jaxft.data.hf_objects import columns as dataset_columns
from jaxft.data.readers import (column_names_text, hf_load_failure_message, hf_source_label, json_rows, jsonl_rows,
                                parquet_rows, read_text)
from jaxft.data.tags import convert_to_bio_counted, detect_scheme, normalize_scheme, parse_tag

CONLL_EXTENSIONS = (".conll", ".txt", ".tsv", ".iob", ".bio")
TABLE_EXTENSIONS = (".json", ".jsonl", ".parquet")

log = logging.getLogger("jaxft.data")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str] | None  # None for unlabelled data
    source: str  # "file:line" of the first token, or "file:row N"
    document: int | str | None = None  # sentences of one document share it (None: no document structure)



# ---------------------------------------------------------------- CoNLL


def read_conll(
    path: str | os.PathLike,
    token_column: int = 0,
    tag_column: int | None = -1,
    encoding: str = "utf-8",
) -> list[Sentence]:
    """Read a CoNLL-style file: one token a line, columns split on tabs (or on whitespace in a line
    without tabs), sentences separated by whitespace-only lines.

    ``-DOCSTART-`` lines end the current sentence and start a new document: with at least one such line,
    each sentence's ``document`` numbers its document (0 for sentences before the first marker), else it is
    None (no document structure). Lines starting with ``"# "`` are
    comments (CoNLL-U style) and are skipped, so in whitespace-separated files a token ``#`` cannot be
    written as ``# TAG`` (use tabs). ``tag_column=None`` reads unlabelled files (tags are None).

    With a tag column, every token line must have as many columns as the file's first one: a line with more or fewer is
    refused (a token with a space in a whitespace-separated file, a lost or extra column), because taking
    the first and last column of it would silently misread the token or its tag. A carriage return inside
    a line (old Mac line endings) is refused for the same reason.
    """
    if tag_column is not None and token_column == tag_column:
        raise ValueError(f"token_column and tag_column are both {token_column}")
    text = read_text(path, encoding)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0
    layout: tuple[int, int, str] | None = None  # (line, columns, kind) of the first token line
    document = 0
    marked = False  # the file has -DOCSTART- lines

    def end_sentence() -> None:
        if tokens:
            labelled = tags if tag_column is not None else None
            sentences.append(Sentence(list(tokens), list(labelled) if labelled is not None else None,
                                      f"{path}:{first_line}", document))
        tokens.clear()
        tags.clear()

    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.startswith("-DOCSTART-"):
            end_sentence()
            document += any(s.document == document for s in sentences[-1:])  # empty documents take no number
            marked = True
            continue
        if not line.strip():
            end_sentence()
            continue
        if line.startswith("# "):
            continue
        if "\r" in line:
            raise DataError(path, "carriage return (\\r) inside the line: the file mixes line endings (old Mac "
                                  "\\r line breaks?); convert it to \\n or \\r\\n", number)
        try:
            token, tag, columns, kind = _split_conll_line(line, token_column, tag_column)
        except ValueError as error:
            raise DataError(path, str(error), number) from None
        if layout is None:
            layout = (number, columns, kind)
        elif columns != layout[1] and tag_column is not None:  # unlabelled reading ignores the other columns
            raise DataError(path, f"{columns} {kind} columns, but line {layout[0]} has {layout[1]} "
                                  f"{layout[2]} columns: a token with a space or tab in it, or a missing or extra "
                                  "column?", number)
        if not tokens:
            first_line = number
        tokens.append(token)
        if tag is not None:
            tags.append(tag)
    end_sentence()
    if not sentences:
        raise DataError(path, "no sentences found (only blank lines, comments or -DOCSTART- lines)")
    if not marked:
        for sentence in sentences:
            sentence.document = None
    return sentences


def _split_conll_line(line: str, token_column: int, tag_column: int | None) -> tuple[str, str | None, int, str]:
    if "\t" in line:
        columns = [column.strip() for column in line.split("\t")]
        while columns and not columns[-1]:  # trailing tabs
            columns.pop()
        kind = "tab-separated"
    else:
        columns = line.split()
        kind = "whitespace-separated"
    needed = _columns_needed(token_column)
    if tag_column is not None:
        needed = max(needed, _columns_needed(tag_column), 2)
    names = "token, tag" if tag_column is not None else "token"
    if len(columns) < needed or (
        tag_column is not None and token_column % len(columns) == tag_column % len(columns)
    ):
        raise ValueError(f"expected at least {needed} {kind} columns ({names}), got {len(columns)}")
    token = columns[token_column]
    if not token:
        raise ValueError(f"empty token in column {token_column}")
    if tag_column is None:
        return token, None, len(columns), kind
    tag = columns[tag_column]
    parse_tag(tag)
    return token, tag, len(columns), kind


def _columns_needed(index: int) -> int:
    return index + 1 if index >= 0 else -index


# ---------------------------------------------------------------- tables (JSON, JSONL, parquet)


def read_table(
    path: str | os.PathLike,
    tokens_column: str = "tokens",
    tags_column: str | None = "tags",
    label_names: Sequence[str] | None = None,
    document_column: str | None = None,
) -> list[Sentence]:
    """Read ``.json`` (a list of objects, or ``{"data": [...]}``), ``.jsonl`` or ``.parquet`` rows.

    Tokens must be a list of strings; tags a list of strings or of ints, where ints index
    ``label_names``. ``tags_column=None`` reads unlabelled rows. Rows with no tokens are skipped.
    ``document_column``: a column of document ids (strings or ints); consecutive rows with the same id are
    one document.
    """
    suffix = Path(path).suffix.lower()
    columns = ([tokens_column] + ([tags_column] if tags_column is not None else [])
               + ([document_column] if document_column else []))
    if suffix == ".parquet":
        rows = parquet_rows(path, columns)
    elif suffix == ".jsonl":
        rows = jsonl_rows(path)
    elif suffix == ".json":
        rows = json_rows(path)
    else:
        raise DataError(path, f"unknown table extension {suffix!r}: expected one of {', '.join(TABLE_EXTENSIONS)}")
    sentences = []
    empty: list[str] = []
    for where, row in rows:
        missing = [column for column in columns if column not in row]
        if missing:
            raise DataError(where, f"no column {missing[0]!r}; this row has columns: {column_names_text(row)}")
        sentence = _row_to_sentence(where, row[tokens_column], row.get(tags_column) if tags_column else None,
                                    tags_column, label_names)
        if sentence is not None:
            sentence.document = _document_id(where, row, document_column)
            sentences.append(sentence)
        else:
            empty.append(where)
    if not sentences:
        raise DataError(path, "no sentences found (no rows, or only rows without tokens)")
    report_skipped_rows(path, empty)
    return sentences


def _document_id(where: str, row, document_column: str | None) -> int | str | None:
    if not document_column:
        return None
    value = row[document_column]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(where, f"document id in column {document_column!r} must be a string or an integer, "
                               f"got {value!r}")
    return value


def report_skipped_rows(path, empty: Sequence[str]) -> None:
    """Rows without tokens carry nothing to train or score on; they are skipped, but never silently."""
    if empty:
        log.warning("%s: skipped %d row(s) with no tokens (first: %s)", path, len(empty), empty[0])


def _row_to_sentence(
    where: str,
    tokens: Any,
    tags: Any,
    tags_column: str | None,
    label_names: Sequence[str] | None,
) -> Sentence | None:
    if not isinstance(tokens, (list, tuple)):
        raise DataError(where, f"tokens must be a list of strings, got {type(tokens).__name__}")
    for index, token in enumerate(tokens):
        if not isinstance(token, str):
            raise DataError(where, f"token {index} is {token!r}, expected a string")
    if not tokens:
        return None
    if tags_column is None:
        return Sentence(list(tokens), None, where)
    if not isinstance(tags, (list, tuple)):
        raise DataError(where, f"tags in column {tags_column!r} must be a list, got {type(tags).__name__}")
    if len(tags) != len(tokens):
        raise DataError(where, f"{len(tokens)} tokens but {len(tags)} tags in column {tags_column!r}")
    names = [_tag_name(where, index, tag, tags_column, label_names) for index, tag in enumerate(tags)]
    return Sentence(list(tokens), names, where)


def _tag_name(where: str, index: int, tag: Any, tags_column: str, label_names: Sequence[str] | None) -> str:
    if isinstance(tag, int) and not isinstance(tag, bool):
        if label_names is None:
            raise DataError(
                where,
                f"tags in column {tags_column!r} are integers; pass label_names=[...] "
                "(the tag name of each integer) to read them",
            )
        if not 0 <= tag < len(label_names):
            raise DataError(where, f"tag {index} is {tag}, outside label_names (0..{len(label_names) - 1})")
        tag = label_names[tag]
    elif not isinstance(tag, str):
        raise DataError(where, f"tag {index} is {tag!r}, expected a string or an integer")
    try:
        parse_tag(tag)
    except ValueError as error:
        raise DataError(where, f"token {index}: {error}") from None
    return tag


# ---------------------------------------------------------------- Hugging Face datasets


def read_hf_dataset(
    name: Any,
    config_name: str | None = None,
    split: str = "train",
    tokens_column: str = "tokens",
    tags_column: str | None = "tags",
    cache_dir: str | os.PathLike | None = None,
    label_names: Sequence[str] | None = None,
    document_column: str | None = None,
    **load_kwargs: Any,
) -> list[Sentence]:
    """Read one split with ``datasets.load_dataset(name, config_name, split=..., **load_kwargs)``.

    ``name`` is a hub id (needs the hub or a cached copy) or a builder name such as "json" or "parquet"
    with ``data_files=...``; or a ``Dataset`` / ``DatasetDict`` / ``IterableDataset`` object or a folder
    that ``save_to_disk`` wrote (data.hf_objects: a DatasetDict gives ``split``, a Dataset is read whole).
    When the tags feature is a sequence of ClassLabel, its names are used (an explicit ``label_names`` wins).
    ``document_column``: document ids, as in ``read_table``.
    """
    if is_local_source(name):
        dataset, label = load_split(name, split), source_label(name, split)
    else:
        import datasets  # datasets loads only for hub datasets (seconds of start-up otherwise)

        try:
            dataset = datasets.load_dataset(name, config_name, split=split, cache_dir=cache_dir, **load_kwargs)
        except Exception as error:  # datasets raises many unrelated types
            raise DataError(name, hf_load_failure_message(name, config_name, split, cache_dir, load_kwargs, error)) from error
        if not isinstance(dataset, datasets.Dataset):
            raise DataError(name, f"split {split!r} did not give a Dataset (got {type(dataset).__name__})")
        label = hf_source_label(name, split, load_kwargs)
    return dataset_sentences(dataset, label, tokens_column, tags_column, label_names, document_column)


def dataset_sentences(dataset, label: str, tokens_column: str = "tokens", tags_column: str | None = "tags",
                      label_names: Sequence[str] | None = None, document_column: str | None = None
                      ) -> list[Sentence]:
    """The rows of one Dataset (or IterableDataset) as Sentences, each located as "label:row N"
    (``document_column``: document ids, as in ``read_table``)."""
    names = column_names(dataset)
    columns = ([tokens_column] + ([tags_column] if tags_column is not None else [])
               + ([document_column] if document_column else []))
    for column in columns:
        if column not in names:
            raise DataError(label, f"no column {column!r}; the dataset has columns: {column_names_text(names)}")
    if tags_column is not None and label_names is None:
        label_names = class_label_names(feature_of(dataset, tags_column))
    data = dataset_columns(dataset, columns)
    sentences = []
    empty: list[str] = []
    for index, tokens in enumerate(data[tokens_column]):
        tags = data[tags_column][index] if tags_column is not None else None
        where = f"{label}:row {index}"
        sentence = _row_to_sentence(where, tokens, tags, tags_column, label_names)
        if sentence is not None:
            sentence.document = _document_id(where, {k: data[k][index] for k in columns}, document_column)
            sentences.append(sentence)
        else:
            empty.append(f"{label}:row {index}")
    if not sentences:
        raise DataError(label, "no sentences found (no rows, or only rows without tokens)")
    report_skipped_rows(label, empty)
    return sentences


# ---------------------------------------------------------------- dispatch, scheme conversion, splits


def read_sentences(path: str | os.PathLike, *, token_column: int = 0, tag_column: int | None = -1,
                   tokens_column: str = "tokens", tags_column: str = "tags",
                   label_names: Sequence[str] | None = None, encoding: str = "utf-8",
                   document_column: str | None = None) -> list[Sentence]:
    """Read a file by its extension: CoNLL text (``read_conll``: token_column, tag_column, encoding) or a
    table (``read_table``: tokens_column, tags_column, label_names); the other reader's options are unused.
    """
    if is_saved_dataset(path):  # a save_to_disk folder of one Dataset (data.hf_objects)
        return dataset_sentences(load_split(path, None), str(path), tokens_column, tags_column, label_names,
                                 document_column)
    suffix = Path(path).suffix.lower()
    if suffix in CONLL_EXTENSIONS:
        return read_conll(path, token_column=token_column, tag_column=tag_column, encoding=encoding)
    if suffix in TABLE_EXTENSIONS:
        return read_table(path, tokens_column=tokens_column, tags_column=tags_column, label_names=label_names,
                          document_column=document_column)
    known = ", ".join(CONLL_EXTENSIONS + TABLE_EXTENSIONS)
    raise DataError(path, f"unknown file extension {suffix!r}: expected one of {known}")


@dataclass
class BioSentences:
    sentences: list[Sentence]  # new Sentence objects with strict IOB2 tags
    scheme: str  # the scheme read (detected when "auto" was asked)
    repaired: int  # continuation tags read as B- (see tags.BioConversion)


def sentences_to_bio(sentences: Sequence[Sentence], scheme: str = "auto") -> BioSentences:
    """Convert labelled sentences to strict IOB2; ``scheme="auto"`` detects it from all their tags.

    Detect on the training set and pass the result for dev and test, so that all splits agree.
    """
    scheme = normalize_scheme(scheme, allow_auto=True)
    labelled = [sentence for sentence in sentences if sentence.tags is not None]
    if scheme == "auto":
        try:
            scheme = detect_scheme(sentence.tags for sentence in labelled)
        except ValueError as error:  # IOBES and BILOU prefixes in one corpus: name where each first appears
            raise DataError(_first_source(labelled, "LU"), f"{error} (IOBES first at "
                                                           f"{_first_source(labelled, 'ES')})") from None
    converted = []
    repaired = 0
    for sentence in sentences:
        if sentence.tags is None:
            converted.append(sentence)
            continue
        try:
            result = convert_to_bio_counted(sentence.tags, scheme)
        except ValueError as error:
            raise DataError(sentence.source, str(error)) from None
        repaired += result.repaired
        converted.append(Sentence(list(sentence.tokens), result.tags, sentence.source, sentence.document))
    return BioSentences(converted, scheme, repaired)


def _first_source(sentences: Sequence[Sentence], prefixes: str) -> str:
    for sentence in sentences:
        if any(tag[:2] in {f"{p}-" for p in prefixes} for tag in sentence.tags):
            return sentence.source
    return "?"
