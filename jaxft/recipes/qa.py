r"""Extractive QA: fine-tune an encoder on SQuAD-format data (v1.1, or v2.0 with unanswerable questions).

Command (no QA data ships in any package here: point it at SQuAD-format files):
    python -m jaxft.main --config configs/qa.py --workdir runs/qa \
        --config.data.train_file=train-v1.1.json --config.data.validation_file=dev-v1.1.json

Data: SQuAD JSON ({"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}) or flat .json/.jsonl
rows (id, title, context, question, answers {text: [...], answer_start: [...]}), or a hub dataset
(--config.data.train_file= --config.data.hf_dataset=squad). A lone train file is split 70/15/15 by
paragraph in file order. SQuAD v2 is detected from `is_impossible` questions; its null-answer threshold
is tuned on dev. Metrics: exact match and F1 with SQuAD's normalisation (fractions, not percentages);
predictions_dev.json / predictions_test.json in the workdir.

Windows: data.max_length tokens (question + context), consecutive windows share qa.doc_stride tokens;
answers at most qa.max_answer_length tokens; qa.n_best_size start/end candidates per window.
Expected: not measured on real data (none ships here). tests/test_qa.py trains a random 2-layer model on
generated SQuAD v1 and v2 files (accents, CJK and an emoji in the answers; contexts longer than one window)
to test EM/F1 >= 0.95 (v1) and F1 >= 0.85 (v2) in seconds.
"""

from jaxft.config import base_config


def get_config():
    config = base_config()
    config.task = "question-answering"
    config.data.train_file = ""
    config.data.max_length = 384
    config.qa.doc_stride = 128
    config.qa.max_query_length = 64
    config.qa.max_answer_length = 30
    config.qa.n_best_size = 20
    config.optim.learning_rate = 5e-5
    config.optim.weight_decay = 0.01
    config.optim.warmup_ratio = 0.1
    config.train.batch_size = 32
    config.train.num_epochs = 2
    return config
