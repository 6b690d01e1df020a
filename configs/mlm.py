"""Continued masked-LM pretraining of the packaged all-MiniLM-L6-v2 on Rotten Tomatoes review text.

The file `python -m jaxft.main --config configs/mlm.py` reads. The recipe itself, with its command, data and
measured results, is jaxft/recipes/mlm.py (in the package: `jaxft.recipe("mlm")` gives the same config).
"""

from jaxft.recipes.mlm import get_config  # noqa: F401
