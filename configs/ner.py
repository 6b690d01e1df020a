"""NER: fine-tune the packaged all-MiniLM-L6-v2 on the packaged English tweets NER data (10 entity types).

The file `python -m jaxft.main --config configs/ner.py` reads. The recipe itself, with its command, data and
measured results, is jaxft/recipes/ner.py (in the package: `jaxft.recipe("ner")` gives the same config).
"""

from jaxft.recipes.ner import get_config  # noqa: F401
