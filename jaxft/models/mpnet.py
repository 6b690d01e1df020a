"""MPNet (model_type "mpnet") in Flax NNX: BERT's layer and embeddings (no token types, RoBERTa-style
positions from padding index 1) plus one relative-position score bias that every layer adds.

The layers keep BERT's module names; models/config.py's MPNet renames map them to transformers' names
("attention.self.query" <-> "attention.attn.q", "attention.output.dense" <-> "attention.attn.o",
"attention.output.LayerNorm" <-> "attention.LayerNorm"). The bias is transformers' MPNetEncoder
.compute_position_bias: `encoder.relative_attention_bias` [buckets, heads] looked up at the bucket of
(key position - query position) (relative_positions.mpnet_buckets, 32 buckets, max distance 128), shared by
all layers and added to the scaled scores through models/attention.py's `bias` (so attention runs on "xla").
Padded rows use positions 0..T-1 for it, as transformers does; packed rows their restarting position ids.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxft.models.config import MPNET_BUCKETS, EncoderConfig
from jaxft.models.encoder import Embeddings, Encoder, LayerStack, Pooler, Rows, default_position_ids, embed, rows_of
from jaxft.models.relative_positions import distance_table, mpnet_buckets, pair_buckets


class MPNetLayerStack(LayerStack):
    """BERT's layers plus the relative-position bias table they share (transformers' MPNetEncoder)."""

    def __init__(self, config: EncoderConfig, *, dtype, remat: str = "none", rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, remat=remat, rngs=rngs)
        self.relative_attention_bias = embed(config.relative_attention_num_buckets, config.num_heads, (None, None),
                                             dtype=dtype, rngs=rngs)

    def position_bias(self, length: int, position_ids=None):
        """[1, N, T, T] for rows numbered 0..T-1, [B, N, T, T] from packed rows' position ids."""
        # pair_buckets indexes by (query - key); MPNet buckets (key - query)
        table = distance_table(length, lambda d: mpnet_buckets(-d, MPNET_BUCKETS))
        buckets = pair_buckets(table, length, position_ids)
        values = self.relative_attention_bias(jnp.asarray(buckets))  # [(B,) T, T, N]
        values = values if values.ndim == 4 else values[None]
        return jnp.moveaxis(values, -1, 1)

    def __call__(self, x, rows: Rows, position_ids=None):
        bias = self.position_bias(x.shape[1], position_ids if rows.packed else None)
        return super().__call__(x, rows, bias)


class MPNetEncoder(Encoder):
    """transformers' MPNetModel: Embeddings (word + position) + MPNetLayerStack (+ BERT's pooler when asked)."""

    def __init__(self, config: EncoderConfig, *, add_pooler: bool = False, dtype=jnp.float32,
                 hf_config_json: str = "{}", remat: str = "none", rngs: nnx.Rngs):
        self.config = config
        self.hf_config_json = hf_config_json
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = MPNetLayerStack(config, dtype=dtype, remat=remat, rngs=rngs)
        if add_pooler:
            self.pooler = Pooler(config, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        """Last hidden states [B, T, hidden]; arguments as Encoder.__call__ (MPNet has no token types, so
        token_type_ids are ignored)."""
        rows = rows_of(input_ids, attention_mask, segment_ids)
        if position_ids is None:
            position_ids = default_position_ids(self.config, input_ids)
        x = self.embeddings(input_ids, position_ids, None, inputs_embeds)
        return self.encoder(x, rows, position_ids)
