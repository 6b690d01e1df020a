r"""NER with LoRA: the NER default (all-MiniLM-L6-v2 on the packaged English tweets NER data), but only
rank-8 LoRA adapters on every dense layer of the encoder plus the token classifier are trained.

Command:
    python -m jaxft.main --config configs/ner_lora.py --workdir runs/ner_lora

Result so far (seed 0, shared 2-core CPU, tuned on dev): test F1 0.412, dev 0.458, 777 s of training, with
340k of 22.7M parameters trainable (1.5%). Full fine-tuning (configs/ner.py, seed 0) reached test 0.440 /
dev 0.462; the 3-seed comparison is still to be run (benchmarks/peft_methods.py --methods full,lora
--seeds 0,1,2).

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
    config.peft.modules_to_save = "auto"                  # the token classifier, trained in full
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.01
    config.optim.warmup_ratio = 0.1
    config.optim.schedule = "linear"
    config.train.batch_size = 32
    config.train.num_epochs = 10
    config.data.max_length = 128
    return config
