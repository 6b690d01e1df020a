"""The recipes: one module per recipe, each with a header (command, data, measured result) and get_config().

    jaxft.recipe("ner")                       # a fresh ConfigDict of jaxft/recipes/ner.py
    python -m jaxft.main --config configs/ner.py  # the same recipe: configs/<name>.py imports it from here

They live in the package so that an installed jaxft (a wheel has no configs/ folder) has them too.
"""

from __future__ import annotations

import importlib

from jaxft.config import ConfigError, suggest

NAMES = ("ner", "ner_crf", "ner_lora", "sentiment", "qa", "mlm", "ner_distill", "sentiment_distill")


def get(name: str):
    """The config of recipe `name` (a fresh ConfigDict each call)."""
    if name not in NAMES:
        raise ConfigError(f"unknown recipe {name!r}{suggest(name, NAMES)}; recipes: {', '.join(NAMES)}")
    return importlib.import_module(f"jaxft.recipes.{name}").get_config()
