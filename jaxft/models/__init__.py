"""Flax NNX BERT-family encoders, task heads, and Hugging Face checkpoint I/O."""

from jaxft.models.config import FAMILIES, EncoderConfig, UnsupportedModelError
from jaxft.models.encoder import Encoder
from jaxft.models.heads import (MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TASKS, TOKEN_CLASSIFICATION,
                                ForMaskedLM, ForQuestionAnswering, ForSequenceClassification, ForTokenClassification,
                                TaskModel)
from jaxft.models.hf import (LoadReport, ModelLoadError, from_pretrained, from_tensors, resolve_model_dir,
                             save_pretrained, to_hf_state_dict)
from jaxft.models.tokenizer import load_tokenizer

__all__ = [
    "FAMILIES", "EncoderConfig", "UnsupportedModelError", "Encoder", "TaskModel", "ForTokenClassification",
    "ForSequenceClassification", "ForQuestionAnswering", "ForMaskedLM", "MASKED_LM", "TASKS", "TOKEN_CLASSIFICATION",
    "SEQUENCE_CLASSIFICATION", "QUESTION_ANSWERING", "LoadReport", "ModelLoadError", "from_pretrained",
    "from_tensors", "save_pretrained", "to_hf_state_dict", "resolve_model_dir", "load_tokenizer",
]
