"""jaxft: fine-tune BERT-family encoders in JAX/Flax NNX."""

__version__ = "0.1.0"
