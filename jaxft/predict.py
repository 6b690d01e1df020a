"""Prediction with exported model folders, for any task: the predictor an export's task asks for, and the
`predict` command's loop (inputs in, one JSON object a line out).

    predictor = load_predictor("runs/ner/export")      # or a list of folders: an ensemble
    predictor.predict_items(["John lives in Paris"])
"""

from __future__ import annotations

import json
import sys
from itertools import islice
from pathlib import Path
from typing import Iterable, Sequence, TextIO

from jaxft import runtime
from jaxft.tasks import registry
from jaxft.tasks.predictor import Predictor, as_folder_list

CHUNK = 256  # items predicted (and written) at a time, so a long stdin stream is answered as it arrives


def load_predictor(model_dirs: str | Path | Sequence[str | Path], **options) -> Predictor:
    """The task's predictor for one export or an ensemble of exports (the task is read from config.json).
    options: max_length, batch_size, batch_sizes, length_buckets, dtype, safetensors_only."""
    dirs = as_folder_list(model_dirs)
    return registry.for_folder(dirs[0]).predictor(dirs, **options)


def run_predict(model_dirs: str | Path | Sequence[str | Path], input_path: str | None, output: TextIO = sys.stdout, *,
                input_format: str = "text", **options) -> int:
    """Predict every input item of `input_path` (stdin when None) and write one JSON object per item."""
    runtime.enable_compilation_cache()  # the same on-disk cache as training and serve
    dirs = as_folder_list(model_dirs)
    spec = registry.for_folder(dirs[0])
    if input_format not in spec.input_formats:
        raise ValueError(f"--format {input_format} is not an input format of {spec.name} models "
                         f"({', '.join(spec.input_formats)})")
    predictor = spec.predictor(dirs, **options)
    count = 0
    for items in _chunks(spec.read_inputs(predictor, input_path, input_format), CHUNK):
        for result in predictor.predict_items(items):
            output.write(json.dumps(result, ensure_ascii=False) + "\n")
            count += 1
        output.flush()
    return count


def _chunks(items: Iterable, size: int):
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
