r"""NER distillation: a 3-layer student of the configs/ner.py export (all-MiniLM-L6-v2, 6 layers), trained on
the teacher's soft targets plus the labels of the same packaged tweets NER data.

Commands (the teacher first; the student reads its export):
    python -m jaxft.main --config configs/ner.py --workdir runs/ner
    python -m jaxft.main --config configs/ner_distill.py --workdir runs/ner_student
    # another teacher: --config.distill.teacher=DIR; other layers: --config.distill.layer_choice=every_other|spread|0,2,5

The student starts from teacher layers 0, 1 and 2 (first) with the teacher's embeddings and head; the
loss per trained sub-token is 0.5 * T^2 KL(teacher_T || student_T) + 0.5 * cross-entropy to the tag, T = 2
(jaxft/distill.py). Data, split, optimizer and schedule are configs/ner.py's.

Measured (idle 2-core CPU, teacher = configs/ner.py seed 0: test F1 0.4398, dev 0.4625; 3 layers, 17.3M
parameters against 22.6M, 69.0 MB; chosen by dev F1)
(measured before 2026-12-04, when jaxft's dropout drew jax.random.bernoulli masks; its own masks,
jaxft/models/dropout.py, are a different random stream, so a rerun gives other figures):
    layer_choice first (0, 1, 2; the default here): test F1 0.4425 (+0.003), dev 0.4599
    layer_choice every_other (0, 2, 4):             test F1 0.4307 (-0.009), dev 0.4355
    `python benchmarks/distill.py --ner runs/ner/export runs/ner_student/export`: predict on the test split
    241.5 against 119.4 sentences/s (2.02x), [32, 64] predict step 210 against 417 ms, half the FLOPs.
"""

from jaxft.recipes.ner import get_config as ner_config


def get_config():
    config = ner_config()
    config.distill.teacher = "runs/ner/export"
    config.distill.student_layers = 3
    config.distill.layer_choice = "first"
    config.distill.temperature = 2.0
    config.distill.soft_weight = 0.5
    return config
