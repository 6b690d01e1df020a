"""Tasks: one module per task (ner, classification, qa, mlm) with its data, training Task, predictor and
spec; registry.py lists them; run.py is the one training run every task goes through."""
