"""NER distillation: a 3-layer student of the configs/ner.py export, on the teacher's soft targets plus the labels.

The file `python -m jaxft.main --config configs/ner_distill.py` reads. The recipe itself, with its commands and
measured results, is jaxft/recipes/ner_distill.py (in the package: `jaxft.recipe("ner_distill")`).
"""

from jaxft.recipes.ner_distill import get_config  # noqa: F401
