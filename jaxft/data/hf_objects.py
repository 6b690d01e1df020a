"""`datasets` objects and `save_to_disk` folders as data sources: recognise them, pick a split, read columns.

The hub readers (ner_readers.read_hf_dataset, text_readers.read_hf_text_dataset / read_hf_squad) take, besides
a hub id or a builder name, a `Dataset`, `DatasetDict`, `IterableDataset` (or `IterableDatasetDict`) object or
a folder that `save_to_disk` wrote; the file readers take a `save_to_disk` folder of one `Dataset` wherever a
file goes (data.train_file, ...). A `Dataset` has no splits and is read whole; a `DatasetDict` gives the split
asked for by name. `datasets` is imported only when a source is one of these.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from jaxft.data.errors import DataError

DICT_MARKER = "dataset_dict.json"                       # DatasetDict.save_to_disk
DATASET_MARKERS = ("dataset_info.json", "state.json")   # Dataset.save_to_disk


def is_saved_dataset(path: Any) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        return False
    folder = Path(path).expanduser()
    return folder.is_dir() and ((folder / DICT_MARKER).is_file() or
                                all((folder / name).is_file() for name in DATASET_MARKERS))


def is_saved_dataset_dict(path: Any) -> bool:
    return is_saved_dataset(path) and (Path(path).expanduser() / DICT_MARKER).is_file()


def is_dataset_object(value: Any) -> bool:
    """A Dataset, DatasetDict, IterableDataset or IterableDatasetDict (False without `datasets` imported:
    nobody can hold one then)."""
    datasets = sys.modules.get("datasets")
    if datasets is None:
        return False
    return isinstance(value, (datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset,
                              datasets.IterableDatasetDict))


def is_dict_like(value: Any) -> bool:
    """A DatasetDict / IterableDatasetDict object or a saved DatasetDict folder: a source with named splits."""
    if is_saved_dataset(value):
        return is_saved_dataset_dict(value)
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(value, (datasets.DatasetDict, datasets.IterableDatasetDict))


def is_local_source(value: Any) -> bool:
    """Something the hub readers read without `load_dataset`: an object or a save_to_disk folder."""
    return is_dataset_object(value) or is_saved_dataset(value)


def source_label(source: Any, split: str | None = None) -> str:
    """How errors name a source: the folder, or the object's type, with the split of a DatasetDict."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"
    return f"{name}[{split}]" if split and is_dict_like(source) else name


def load_split(source: Any, split: str | None):
    """One Dataset (or IterableDataset) of `source`: the object itself, a DatasetDict's `split`, or what a
    save_to_disk folder holds. split=None refuses a DatasetDict (a file key names one Dataset)."""
    if isinstance(source, (str, os.PathLike)):
        import datasets  # datasets loads only for its own sources (seconds of start-up otherwise)

        try:
            source_object = datasets.load_from_disk(str(Path(source).expanduser()))
        except Exception as error:  # datasets raises many unrelated types for damaged folders
            raise DataError(source, f"not a readable save_to_disk folder ({type(error).__name__}: {error})") from None
    else:
        source_object = source
    if not is_dict_like(source_object):
        return source_object
    names = list(source_object.keys())
    if split is None:
        raise DataError(source_label(source), f"a DatasetDict (splits {', '.join(names)}) where one Dataset is "
                                              "expected: name one split's folder, or give the DatasetDict as "
                                              "data.hf_dataset (its splits are then read by name)")
    if split not in source_object:
        raise DataError(source_label(source), f"no split {split!r}; the DatasetDict has splits: {', '.join(names)}")
    return source_object[split]


def column_names(dataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # an IterableDataset whose features are not known before iterating
        names = list(next(iter(dataset), {}).keys())
    return list(names)


def feature_of(dataset, column: str):
    features = getattr(dataset, "features", None)
    return None if features is None else features.get(column)


def columns(dataset, names: Sequence[str]) -> dict[str, list]:
    """{column: values} of the named columns, in row order (an IterableDataset is iterated once)."""
    datasets = sys.modules["datasets"]
    selected = dataset.select_columns(list(names))
    if isinstance(selected, datasets.Dataset):
        return selected.to_dict()
    values: dict[str, list] = {name: [] for name in names}
    for row in selected:
        for name in names:
            values[name].append(row[name])
    return values


def class_label_names(feature: Any) -> list[str] | None:
    """The names of a ClassLabel feature, or of a list / sequence of them; None for anything else."""
    datasets = sys.modules.get("datasets")
    if datasets is None or feature is None:
        return None
    inner = getattr(feature, "feature", feature)  # List(ClassLabel) / Sequence(ClassLabel)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None
