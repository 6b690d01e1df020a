"""Parameter-efficient fine-tuning: LoRA/DoRA, BitFit, bottleneck adapters, prefix tuning, freezing by regex.

    trainable = apply_peft(model, config.peft, seed=config.train.seed)   # wraps layers in place
    trainer = Trainer(config, workdir, model, task, trainable=trainable)
    merged = merge(model)                                                 # LoRA/DoRA folded in: a plain model
    save_peft_adapter(model, "adapter/", base_model="path/or/hub-id")     # peft's adapter format
    load_peft_adapter(model, "adapter/")                                  # a peft adapter trained elsewhere
"""

from jaxft.peft.lora import AdapterLinear, LoraLinear, PeftParam, merge
from jaxft.peft.methods import (METHODS, PeftConfig, PrefixSelfAttention, apply_peft, count_params,
                                head_modules, module_rule, peft_info)

__all__ = ["AdapterLinear", "LoraLinear", "PeftParam", "merge", "METHODS", "PeftConfig", "PrefixSelfAttention",
           "apply_peft", "count_params", "head_modules", "module_rule", "peft_info"]
