r"""NER with a CRF head: configs/ner.py (packaged all-MiniLM-L6-v2, packaged tweets NER data, same split,
optimizer and schedule) with `ner.crf=True` (linear-chain CRF, IOB2 rules enforced, potentials learning
crf_lr_ratio 100 times faster than the encoder) and length-bucketed rows (data.packing=False: a CRF chain is one
sentence per row, while configs/ner.py packs rows).

Command:
    python -m jaxft.main --config configs/ner_crf.py --workdir runs/ner_crf

Measured (dev / test entity F1; F1 is deterministic for a seed)
(measured before 2026-12-04, when jaxft's dropout drew jax.random.bernoulli masks; its own masks,
jaxft/models/dropout.py, are a different random stream, so a rerun gives other figures):
    | head | seeds | dev / test F1 per seed | dev F1 mean ± sd | test F1 mean ± sd |
    |---|---|---|---|---|
    | softmax, length buckets (configs/ner.py then) | 0, 1, 2 | 0.4625 / 0.4398, 0.4612 / 0.4192, 0.4847 / 0.4289 | 0.4695 ± 0.0132 | 0.4293 ± 0.0103 |
    | `ner.crf=True` (configs/ner_crf.py) | 0, 1, 2 | 0.5202 / 0.4931, 0.5353 / 0.5077, 0.5187 / 0.5034 | 0.5247 ± 0.0092 | 0.5014 ± 0.0075 |
CRF seed 0 was run in the previous session on the code of that day (softmax seed 0 reproduced bit-for-bit on today's code: dev 0.46247, test 0.43983); seeds 1 and 2 of both heads ran this session.
Not usable with data.packing, ner.label_all_subtokens, train.label_smoothing or ner.class_weights (refused).
"""

from jaxft.recipes.ner import get_config as ner_config


def get_config():
    config = ner_config()
    config.ner.crf = True
    config.data.packing = False       # a CRF chain is one sentence per row: length buckets
    return config
