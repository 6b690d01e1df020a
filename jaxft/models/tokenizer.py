"""The fast tokenizer that sits next to the weights, with padding and truncation always explicit."""

from __future__ import annotations

import os

from jaxft.models.hf import ModelLoadError, resolve_model_dir


def load_tokenizer(name_or_path: str | os.PathLike, *, cache_dir: str | None = None):
    """AutoTokenizer (fast) from a model folder or hub id.

    A tokenizer.json may carry a fixed padding or truncation (the packaged MiniLM pads to 128); both are
    switched off here so that every caller states the padding it wants.
    """
    from transformers import AutoTokenizer  # transformers takes seconds to import: only when a tokenizer loads

    folder = resolve_model_dir(name_or_path, cache_dir=cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, trust_remote_code=False)
    except Exception as err:
        raise ModelLoadError(f"{folder}: no usable tokenizer ({type(err).__name__}: {err})") from None
    if not tokenizer.is_fast:
        raise ModelLoadError(f"{folder}: only a slow tokenizer was found; jaxft needs a fast one (tokenizer.json)")
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    return tokenizer
