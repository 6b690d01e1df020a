"""Sentiment: fine-tune the packaged all-MiniLM-L6-v2 on the packaged Rotten Tomatoes review snippets.

The file `python -m jaxft.main --config configs/sentiment.py` reads. The recipe itself, with its command, data and
measured results, is jaxft/recipes/sentiment.py (in the package: `jaxft.recipe("sentiment")` gives the same config).
"""

from jaxft.recipes.sentiment import get_config  # noqa: F401
