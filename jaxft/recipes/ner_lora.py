r"""NER with LoRA: the NER default (all-MiniLM-L6-v2 on the packaged English tweets NER data, configs/ner.py's
split), but only rank-8 LoRA adapters on every dense layer of the encoder, every LayerNorm and the token
classifier are trained, for 15 epochs.

Command:
    python -m jaxft.main --config configs/ner_lora.py --workdir runs/ner_lora

Runtime: 795 steps; 355 s of training for seed 4, which had the 2-core CPU nearly to itself (658 s when two
seeds shared it). The train step at 32 x 128 takes 1.69 s against full fine-tuning's 1.85 s.

Expected (benchmarks/peft_methods.py --methods full,lora --seeds 0,1,2,3,4; full fine-tuning in the same run)
(measured before 2026-12-04, when jaxft's dropout drew jax.random.bernoulli masks; its own masks,
jaxft/models/dropout.py, are a different random stream, so a rerun gives other figures):
    LoRA (this recipe)          test F1 0.443 / 0.452 / 0.467 / 0.435 / 0.440   mean of seeds 0-2 0.454, of 5 0.447
                                dev  F1 0.500 / 0.489 / 0.514 / 0.502 / 0.517   mean of 5 0.505
    full fine-tuning (ner.py)   test F1 0.440 / 0.419 / 0.429 / 0.424 / 0.426   mean of seeds 0-2 0.429, of 5 0.428
                                dev  F1 0.463 / 0.461 / 0.485 / 0.489 / 0.476   mean of 5 0.475
    350k of 22.9M parameters trainable (1.53%: LoRA A/B, every LayerNorm, the classifier); a checkpoint is
    4.1 MiB against 172 MiB (2.4%); peak RSS 2.9 GiB against 3.5 GiB.
    LoRA trains 15 epochs, full fine-tuning ner.py's 10 at its untuned lr 1e-4 (sweeps/ner_lr_epochs.py
    measures lr 2e-4 better for it: seed 0 dev 0.499, test 0.484).
The plateau: LoRA first sits on the all-"O" plateau (train loss about 0.32, dev F1 0) and leaves it at a
seed-dependent epoch; 15 epochs leave time to train after a late escape.

Exports: `export/` is the merged model (an ordinary HF folder; PyTorch transformers loads it),
`export_adapter/` the adapter in peft's format (`PeftModel.from_pretrained(base, "export_adapter")`).
Checkpoints hold only the LoRA weights, the head and their optimizer moments; `peft_base.json` names the base
model they restore onto.
"""

from jaxft.config import base_config


def get_config():
    config = base_config()
    config.task = "token-classification"
    config.peft.method = "lora"
    config.peft.rank = 8
    config.peft.alpha = 16.0
    config.peft.dropout = 0.0
    config.peft.target_modules = "query|key|value|dense"   # every encoder dense layer
    config.peft.modules_to_save = "classifier|LayerNorm"  # the token classifier and every LayerNorm, in full
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.01
    config.optim.warmup_ratio = 0.1
    config.optim.schedule = "linear"
    config.train.batch_size = 32
    config.train.num_epochs = 15                           # see the header: the plateau
    config.data.max_length = 128
    return config
