"""Flax NNX encoders, task heads, and Hugging Face checkpoint I/O.

Where a new thing goes: an encoder family is an entry of `config.FAMILIES` (plus the blocks that differ,
in encoder.py); a task head is an entry of `heads.HEADS`; checkpoint names map in hf.py.
"""

from jaxft.models.config import FAMILIES, EncoderConfig, UnsupportedModelError
from jaxft.models.encoder import Encoder
from jaxft.models.heads import (HEADS, MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TASKS,
                                TOKEN_CLASSIFICATION, ForMaskedLM, ForQuestionAnswering, ForSequenceClassification,
                                ForTokenClassification, Head, TaskModel)
from jaxft.models.hf import (LoadReport, ModelLoadError, from_pretrained, from_tensors, resolve_model_dir,
                             save_pretrained, task_of, to_hf_state_dict)
from jaxft.models.tokenizer import load_tokenizer

__all__ = [
    "FAMILIES", "EncoderConfig", "UnsupportedModelError", "Encoder", "TaskModel", "ForTokenClassification",
    "ForSequenceClassification", "ForQuestionAnswering", "ForMaskedLM", "HEADS", "Head", "MASKED_LM", "TASKS",
    "TOKEN_CLASSIFICATION", "SEQUENCE_CLASSIFICATION", "QUESTION_ANSWERING", "LoadReport", "ModelLoadError",
    "from_pretrained", "from_tensors", "save_pretrained", "task_of", "to_hf_state_dict", "resolve_model_dir",
    "load_tokenizer",
]
