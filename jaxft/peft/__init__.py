"""Parameter-efficient fine-tuning: LoRA/DoRA, BitFit, bottleneck adapters, prefix tuning, freezing by regex.

    trainable = apply_peft(model, config.peft, seed=config.train.seed)   # wraps layers in place
    trainer = Trainer(config, workdir, model, task, trainable=trainable)
    merged = merge(model)                                                 # LoRA/DoRA folded in: a plain model
    save_peft_adapter(model, "adapter/", base_model="path/or/hub-id")     # peft's adapter format
    model = from_peft_pretrained("adapter/")                              # a peft adapter trained elsewhere

Modules: lora.py (the wrapped layers, merge), methods.py (config -> wrapping + trainable filter),
export.py (merged / peft-format / own-format exports, adapter import, base fingerprint), adversarial.py
(FGM/PGD loss wrapper), run.py (the three calls a task's run makes).

Not implemented: AdaLoRA. Its rank allocation needs, besides an SVD-form adapter (P, diag(E), Q) and an
orthogonality penalty in the loss (both would fit here), per-triplet importance scores kept as exponential
moving averages of |w * grad| across steps and a global top-k mask applied to E every few steps on a
budget schedule. That state and that post-update masking belong to the optimizer (an optax transform that
sees grads and params, whose state then lands in checkpoints and must be sharded like E), i.e. a change
in train/optim.py and the checkpoint layout rather than an add-on in this package.
"""

from jaxft.peft.export import (from_peft_pretrained, load_peft_adapter, load_with_peft, save_merged,
                               save_peft_adapter)
from jaxft.peft.lora import AdapterLinear, LoraLinear, PeftParam, merge
from jaxft.peft.methods import (METHODS, PeftConfig, PrefixSelfAttention, apply_peft, count_params,
                                head_modules, module_rule, peft_info)

__all__ = ["AdapterLinear", "LoraLinear", "PeftParam", "merge", "METHODS", "PeftConfig", "PrefixSelfAttention",
           "apply_peft", "count_params", "head_modules", "module_rule", "peft_info", "from_peft_pretrained",
           "load_peft_adapter", "load_with_peft", "save_merged", "save_peft_adapter"]
