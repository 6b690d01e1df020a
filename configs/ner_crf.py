"""NER with a CRF head: configs/ner.py with ner.crf=True.

The file `python -m jaxft.main --config configs/ner_crf.py` reads. The recipe itself, with its command and
measured results, is jaxft/recipes/ner_crf.py (in the package: `jaxft.recipe("ner_crf")`).
"""

from jaxft.recipes.ner_crf import get_config  # noqa: F401
