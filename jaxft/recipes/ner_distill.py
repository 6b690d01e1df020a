r"""NER distillation: a 3-layer student of the configs/ner.py export (all-MiniLM-L6-v2, 6 layers), trained on
the teacher's soft targets plus the labels of the same packaged tweets NER data.

Commands (the teacher first; the student reads its export):
    python -m jaxft.main --config configs/ner.py --workdir runs/ner
    python -m jaxft.main --config configs/ner_distill.py --workdir runs/ner_student
    # another teacher: --config.distill.teacher=DIR; other layers: --config.distill.layer_choice=first|spread|0,2,5

The student starts from teacher layers 0, 2 and 4 (every_other) with the teacher's embeddings and head; the
loss per trained sub-token is 0.5 * T^2 KL(teacher_T || student_T) + 0.5 * cross-entropy to the tag, T = 2
(jaxft/distill.py). Data, split, optimizer and schedule are configs/ner.py's.
"""

from jaxft.recipes.ner import get_config as ner_config


def get_config():
    config = ner_config()
    config.distill.teacher = "runs/ner/export"
    config.distill.student_layers = 3
    config.distill.layer_choice = "every_other"
    config.distill.temperature = 2.0
    config.distill.soft_weight = 0.5
    return config
