r"""Sentiment distillation: a 3-layer student of the configs/sentiment.py export (all-MiniLM-L6-v2, 6 layers),
trained on the teacher's soft targets plus the labels of the same packaged Rotten Tomatoes snippets.

Commands (the teacher first; the student reads its export):
    python -m jaxft.main --config configs/sentiment.py --workdir runs/sentiment
    python -m jaxft.main --config configs/sentiment_distill.py --workdir runs/sentiment_student
    # another teacher: --config.distill.teacher=DIR; other layers: --config.distill.layer_choice=first|spread|0,2,5

The student starts from teacher layers 0, 2 and 4 (every_other) with the teacher's embeddings, pooler and
head; the loss per review is 0.5 * T^2 KL(teacher_T || student_T) + 0.5 * cross-entropy to the label, T = 2
(jaxft/distill.py). Data, split, optimizer and schedule are configs/sentiment.py's.

Measured (idle 2-core CPU, teacher = configs/sentiment.py seed 0: test accuracy 0.8314, dev 0.8371)
(measured before 2026-12-04, when jaxft's dropout drew jax.random.bernoulli masks; its own masks,
jaxft/models/dropout.py, are a different random stream, so a rerun gives other figures):
    student test accuracy 0.8283 (-0.003), dev 0.8282; 3 layers, 17.4M parameters (teacher 22.7M), 69.6 MB;
    `python benchmarks/distill.py --sentiment runs/sentiment/export runs/sentiment_student/export`: predict on
    the test split 307 against 168 reviews/s (1.82x), [32, 64] predict step 160 against 319 ms.
    layer_choice first (0, 1, 2): test accuracy 0.8101, dev 0.8136, so every_other stays (chosen by dev).
"""

from jaxft.recipes.sentiment import get_config as sentiment_config


def get_config():
    config = sentiment_config()
    config.distill.teacher = "runs/sentiment/export"
    config.distill.student_layers = 3
    config.distill.layer_choice = "every_other"
    config.distill.temperature = 2.0
    config.distill.soft_weight = 0.5
    return config
