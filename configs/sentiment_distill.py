"""Sentiment distillation: a 3-layer student of the configs/sentiment.py export, on the teacher's soft targets plus
the labels.

The file `python -m jaxft.main --config configs/sentiment_distill.py` reads. The recipe itself, with its commands and
measured results, is jaxft/recipes/sentiment_distill.py (in the package: `jaxft.recipe("sentiment_distill")`).
"""

from jaxft.recipes.sentiment_distill import get_config  # noqa: F401
