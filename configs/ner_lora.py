r"""NER with LoRA: the NER default (all-MiniLM-L6-v2 on the packaged English tweets NER data), but only
rank-8 LoRA adapters on every dense layer of the encoder plus the token classifier are trained.

Command:
    python -m jaxft.main --config configs/ner_lora.py --workdir runs/ner_lora

Runtime: about 5 minutes of training on a quiet 2-core CPU (530 steps at length-bucketed shapes; 297 s
measured for one seed with the LayerNorms frozen); the LayerNorm runs below shared the machine and took
about 3,000 s each.

Expected (3 seeds, benchmarks/peft_methods.py --methods full,lora --seeds 0,1,2; settings chosen on dev):
    LoRA (this recipe)          test F1 0.410 / 0.412 / 0.421  mean 0.414   dev mean 0.464
    full fine-tuning (ner.py)   test F1 0.440 / 0.419 / 0.429  mean 0.429   dev mean 0.470
    350k of 22.9M parameters trainable (1.53%: LoRA A/B, every LayerNorm, the classifier); a checkpoint is
    4.2 MiB against 172 MiB (2.4%); peak RSS 2.7-2.8 GiB against 3.3-3.5 GiB.
The test gap is 1.52 points (the issue asks for 1.5), the dev gap 0.5; on 360 test sentences one seed's F1
moves by about 2 points, so the two are within noise of each other, but the bar is not met yet.
Tried on dev (seed 0): the same without LayerNorms trained (test mean 0.407 over 3 seeds, dev 0.455);
query/value only (test 0.380); lr 2e-3, or rank 16 with alpha 32 (both diverged to F1 0).

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
    config.peft.dropout = 0.0                              # see the header: memory
    config.peft.target_modules = "query|key|value|dense"   # every encoder dense layer
    config.peft.modules_to_save = "classifier|LayerNorm"  # the token classifier and every LayerNorm, in full
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.01
    config.optim.warmup_ratio = 0.1
    config.optim.schedule = "linear"
    config.train.batch_size = 32
    config.train.num_epochs = 10
    config.data.max_length = 128
    return config
