"""Evaluation: NER metrics, entity decoding, and run reports."""

from jaxft.evaluate.metrics import decode_entities, ner_metrics, word_char_offsets
from jaxft.evaluate.reports import (MetricsWriter, ProgressBar, plot_training_curves,
                                    print_results_table, read_metrics)

__all__ = [
    "MetricsWriter",
    "ProgressBar",
    "decode_entities",
    "ner_metrics",
    "plot_training_curves",
    "print_results_table",
    "read_metrics",
    "word_char_offsets",
]
