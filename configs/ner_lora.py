"""NER with LoRA: rank-8 LoRA adapters on the NER default (configs/ner.py's model, data and split), 15 epochs.

The file `python -m jaxft.main --config configs/ner_lora.py` reads. The recipe itself, with its command, data and
measured results, is jaxft/recipes/ner_lora.py (in the package: `jaxft.recipe("ner_lora")` gives the same config).
"""

from jaxft.recipes.ner_lora import get_config  # noqa: F401
