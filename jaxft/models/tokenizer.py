"""The fast tokenizer that sits next to the weights, with padding and truncation always explicit."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from jaxft.models.hf import ModelLoadError, resolve_model_dir


def load_tokenizer(name_or_path: str | os.PathLike, *, cache_dir: str | None = None):
    """AutoTokenizer (fast) from a model folder or hub id.

    A tokenizer.json may carry a fixed padding or truncation (the packaged MiniLM pads to 128); both are
    switched off here so that every caller states the padding it wants.
    """
    from transformers import AutoTokenizer  # transformers takes seconds to import: only when a tokenizer loads

    folder = resolve_model_dir(name_or_path, cache_dir=cache_dir)
    _check_sentencepiece(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, trust_remote_code=False)
    except Exception as err:
        raise ModelLoadError(f"{folder}: no usable tokenizer ({type(err).__name__}: {err})") from None
    if not tokenizer.is_fast:
        raise ModelLoadError(f"{folder}: only a slow tokenizer was found; jaxft needs a fast one (tokenizer.json)")
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    return tokenizer


def _check_sentencepiece(folder) -> None:
    """A SentencePiece model without tokenizer.json (DeBERTa-v3's spm.model on the hub) is converted to a fast
    tokenizer by transformers, which needs sentencepiece and protobuf; without them it fails with a message
    about tiktoken. Say what is missing instead. (An export's folder has tokenizer.json: nothing needed.)"""
    folder = Path(folder)
    models = sorted(path.name for path in folder.glob("*.model"))
    if (folder / "tokenizer.json").exists() or not models:
        return
    missing = [name for name, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))
               if not _installed(module)]
    if missing:
        raise ModelLoadError(f"{folder}: {models[0]} is a SentencePiece tokenizer without tokenizer.json; converting "
                             f"it needs {' and '.join(missing)} (pip install 'jaxft[sentencepiece]')")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module set to None in sys.modules
        return False
