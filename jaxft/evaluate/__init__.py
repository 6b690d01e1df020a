"""Evaluation: task metrics (NER with seqeval, classification, SQuAD), entity decoding, run reports."""

from jaxft.evaluate.ner_metrics import decode_entities, ner_metrics, word_char_offsets
from jaxft.evaluate.reports import plot_training_curves, print_results_table, read_metrics

__all__ = ["decode_entities", "ner_metrics", "plot_training_curves", "print_results_table", "read_metrics",
           "word_char_offsets"]
