"""Data: read corpora (NER, text classification, SQuAD), convert tag schemes, align words with sub-tokens,
batch by length."""

from jaxft.data.errors import DataError
from jaxft.data.ner_encoding import (
    IGNORE_INDEX,
    Encoded,
    TruncationReport,
    encode_for_prediction,
    encode_for_training,
    gather_word_predictions,
    prepare_tokenizer,
)
from jaxft.data.ner_readers import (
    BioSentences,
    Sentence,
    read_conll,
    read_hf_dataset,
    read_sentences,
    read_table,
    sentences_to_bio,
)
from jaxft.data.readers import packaged_minilm_path, packaged_tweets_ner_path, split_fixed, train_dev_test
from jaxft.data.tags import (
    BioConversion,
    bio_label_list,
    convert_to_bio,
    convert_to_bio_counted,
    detect_scheme,
    entity_types,
    parse_tag,
)

__all__ = [
    "IGNORE_INDEX",
    "BioConversion",
    "BioSentences",
    "DataError",
    "Encoded",
    "Sentence",
    "TruncationReport",
    "bio_label_list",
    "convert_to_bio",
    "convert_to_bio_counted",
    "detect_scheme",
    "encode_for_prediction",
    "encode_for_training",
    "entity_types",
    "gather_word_predictions",
    "packaged_minilm_path",
    "packaged_tweets_ner_path",
    "parse_tag",
    "prepare_tokenizer",
    "read_conll",
    "read_hf_dataset",
    "read_sentences",
    "read_table",
    "sentences_to_bio",
    "split_fixed",
    "train_dev_test",
]
