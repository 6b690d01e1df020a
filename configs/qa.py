"""Extractive QA: fine-tune an encoder on SQuAD-format data (v1.1, or v2.0 with unanswerable questions).

The file `python -m jaxft.main --config configs/qa.py` reads. The recipe itself, with its command, data and
measured results, is jaxft/recipes/qa.py (in the package: `jaxft.recipe("qa")` gives the same config).
"""

from jaxft.recipes.qa import get_config  # noqa: F401
