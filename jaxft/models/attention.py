"""One attention entry point for every encoder family: `attention(q, k, v, ...)`, and `choose()` for
`model.attention=auto|xla|cudnn|pallas`.

Conventions
- Shapes: q [B, T, N, H]; k, v [B, T, K, H] with N % K == 0. Grouped-query attention: query head n uses
  k/v head n // (N // K) (K == N is plain multi-head attention). The context is [B, T, N, H] in q's dtype.
- segment_ids: int [B, T]. 0 is padding; a query attends only to keys with its own non-zero id.
  `packed=False` (static) promises one left-aligned example per row (ids 1 then 0); `packed=True` allows
  several (1, 2, 3, ... then 0). What padding query positions get is not part of the contract (nothing reads
  them): with padded rows the "xla" path computes them as Hugging Face does (over the row's real keys), so
  whole hidden-state tensors match PyTorch; packed rows and the kernels give them a zero context.
- window (left, right): query i attends keys j with i - left <= j <= i + right, on top of the segment rule
  (ModernBERT's sliding layers: left = right = local_attention // 2). None: no window.
- bias: an additive float score bias broadcastable to [B, N, T, T] (DeBERTa / MPNet relative positions).
- scale defaults to H ** -0.5. Scores accumulate in float32 and the softmax runs in float32 for
  bfloat16/float16 inputs; the probabilities enter the weighted sum in v's dtype (as in the flash kernels)
  and that sum accumulates in float32.
- implementation: "auto" is accepted too and resolved by choose() for jax.default_backend().
- Dropout on the probabilities runs when dropout_rate > 0 and dropout_rng is given (keep with probability
  1 - rate, scale kept ones by 1 / (1 - rate); the mask is jaxft.models.dropout.keep_mask of shape
  [B, N, T, T], the mask jaxft's Dropout module would draw for probabilities of that shape).

Implementations
- "xla": einsum + mask + float32 softmax + einsum. Takes everything: GQA, windows, bias, dropout. The mask
  is built inside from segment_ids ([B, T, T] for packed rows, a [B, 1, 1, 1, T] key mask for padded
  rows). Checked on CPU against a float64 numpy reference (forward and a hand-written numpy backward).
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` with `query_seq_lengths` /
  `key_value_seq_lengths` from the padded rows and `local_window_size`. bfloat16/float16, padded rows,
  left-only windows (left, 0), no bias, no dropout. Not for packed rows: jax 0.10.2's public API takes no
  segment ids (the packed layout exists only behind the private `jax._src.cudnn` q_offsets API, which is not
  used here). Two-sided windows are refused by jax itself ("cuDNN doesn't support right window ... when
  causal mask is not used"). It cannot run on CPU; what was checked there is the argument preparation: the
  same `jax.nn.dot_product_attention` call with implementation="xla" equals the "xla" path.
- "pallas": a flash-attention kernel fed the segment ids, so packed and padded rows both work. No bias, no
  dropout. The kernels take no scale of their own on TPU, so q is multiplied by it first (in q's dtype).
  Not checked: a Pallas call under a multi-device mesh is not partitioned by XLA; it likely needs
  shard_map over batch (and heads), which this module does not do.
  * TPU: splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`), one example per kernel
    call under vmap, GQA native, windows through its LocalMask. T is padded to a multiple of 128.
  * GPU: jax's Triton kernel (`jax.experimental.pallas.ops.gpu.attention.mha`): segment ids, no window
    (refused), no GQA (k/v heads are repeated). T is padded to a power of two (>= 16) or a multiple of 128.
  * CPU: splash attention in Pallas interpret mode (slow; for tests). Both kernels run in interpret mode on
    CPU with jax 0.10.2, forward and backward, and both were checked there against the numpy reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.models.dropout import drop

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas")

_MASKED_SCORE = -0.7 * float(np.finfo(np.float32).max)  # finite, so a fully masked row stays finite
_HALF_DTYPES = (jnp.bfloat16, jnp.float16)


# ----------------------------------------------------------------------------------------------------------
# Entry point


def attention(q, k, v, *, segment_ids, packed: bool, window: tuple[int, int] | None = None, bias=None,
              dropout_rate: float = 0.0, dropout_rng=None, implementation: str = "xla",
              scale: float | None = None):
    """Context [B, T, N, H] of q [B, T, N, H] over k, v [B, T, K, H]; see the module docstring."""
    _check_inputs(q, k, v, segment_ids, window, dropout_rate)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    dropout = dropout_rate > 0.0 and dropout_rng is not None
    request = dict(backend=jax.default_backend(), dtype=q.dtype, packed=packed, window=window,
                   has_bias=bias is not None, dropout=dropout)
    implementation, _ = choose(implementation, **request)
    if implementation == "xla":
        context = _xla_attention(q, k, v, segment_ids, packed=packed, window=window, bias=bias, scale=scale,
                                 dropout_rate=dropout_rate if dropout else 0.0, dropout_rng=dropout_rng)
    elif implementation == "cudnn":
        context = _dot_product_attention(q, k, v, segment_ids, window=window, scale=scale,
                                         implementation="cudnn")
    else:
        context = _pallas_attention(q, k, v, segment_ids, window=window, scale=scale,
                                    backend=request["backend"])
    if packed or implementation != "xla":
        context = _zero_padding_queries(context, segment_ids)
    return context.astype(q.dtype)


def masked_attention(q, k, v, allowed, *, bias=None, dropout_rate: float = 0.0, dropout_rng=None,
                     scale: float | None = None):
    """The explicit maths for layouts the entry point does not describe (e.g. prefix tuning's learned keys
    before the real ones): q [B, T, N, H], k/v [B, S, N, H], `allowed` boolean and `bias` (additive, optional)
    broadcastable to [B, N, T, S]. Scores and softmax in float32, dropout as in the "xla" implementation."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    scores = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        scores = scores + jnp.asarray(bias, jnp.float32)
    probs = jax.nn.softmax(jnp.where(allowed, scores, _MASKED_SCORE), axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        probs = drop(probs, dropout_rate, dropout_rng)
    context = jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return context.astype(q.dtype)


def choose(requested: str, *, backend: str, dtype, packed: bool, window, has_bias: bool,
           dropout: bool) -> tuple[str, str]:
    """(implementation, reason for the start-up log) for `model.attention=requested` on `backend`
    ("cpu", "gpu", "tpu"). An explicit request that cannot work raises ValueError saying why."""
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention={requested!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    needs = dict(backend=backend, dtype=jnp.dtype(dtype), packed=packed, window=window, has_bias=has_bias,
                 dropout=dropout)
    if requested != "auto":
        why_not = _why_not(requested, **needs)
        if why_not:
            raise ValueError(f"model.attention={requested} cannot run here: {why_not}")
        return requested, f"{requested}: requested explicitly ({_describe(requested, backend)})"
    return _auto(**needs)


# ----------------------------------------------------------------------------------------------------------
# Choosing


def _auto(*, backend, dtype, packed, window, has_bias, dropout) -> tuple[str, str]:
    if dropout:
        return "xla", "xla: attention dropout needs the explicit path"
    if has_bias:
        return "xla", "xla: a score bias (relative positions) needs the explicit path"
    needs = dict(backend=backend, dtype=dtype, packed=packed, window=window, has_bias=False, dropout=False)
    if backend == "tpu":
        return "pallas", "pallas: splash attention on TPU"
    if backend == "gpu":
        if packed:
            why_not = _why_not("pallas", **needs)
            if not why_not:
                return "pallas", "pallas: packed rows on GPU take the segment-id Triton kernel"
            return "xla", f"xla: packed rows cannot use cuDNN here and {why_not}"
        why_not = _why_not("cudnn", **needs)
        if not why_not:
            return "cudnn", f"cudnn: {dtype.name} padded rows on GPU"
        return "xla", f"xla: {why_not}"
    return "xla", f"xla: the reference path on {backend}"


def _why_not(implementation, *, backend, dtype, packed, window, has_bias, dropout) -> str | None:
    """Why `implementation` cannot run this request, or None when it can."""
    if implementation == "xla":
        return None
    if dropout:
        return f"{implementation} has no attention dropout (only xla has)"
    if has_bias:
        return f"{implementation} takes no score bias (relative positions need xla)"
    if implementation == "cudnn":
        return _why_not_cudnn(backend, dtype, packed, window)
    return _why_not_pallas(backend, window)


def _why_not_cudnn(backend, dtype, packed, window) -> str | None:
    if backend != "gpu":
        return f"cudnn needs a CUDA GPU (backend is {backend})"
    if dtype not in [jnp.dtype(d) for d in _HALF_DTYPES]:
        return f"cudnn takes bfloat16/float16 only, got {jnp.dtype(dtype).name}"
    if packed:
        return ("cudnn cannot keep packed segments apart through jax.nn.dot_product_attention "
                "(no segment ids in its API)")
    if window is not None and window[1] != 0:
        return f"cudnn does left-only windows (left, 0) through jax.nn.dot_product_attention, got {tuple(window)}"
    return None


def _why_not_pallas(backend, window) -> str | None:
    if backend not in ("tpu", "gpu", "cpu"):
        return f"pallas has no kernel for backend {backend}"
    if window is not None and _pallas_kernel(backend) == "triton":
        return f"the GPU Pallas kernel (Triton mha) has no local window, got {tuple(window)}"
    return None


def _describe(implementation, backend) -> str:
    if implementation == "pallas":
        kernel = {"tpu": "splash attention", "gpu": "Triton mha", "cpu": "splash attention, interpret mode"}
        return kernel.get(backend, backend)
    return {"xla": "einsum + float32 softmax", "cudnn": "cuDNN flash attention"}[implementation]


# ----------------------------------------------------------------------------------------------------------
# Shared pieces


def _check_inputs(q, k, v, segment_ids, window, dropout_rate):
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"attention wants q [B, T, N, H] and k, v [B, T, K, H], got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    (batch, length, heads, head_dim), kv_heads = q.shape, k.shape[2]
    if (k.shape[0], k.shape[1], k.shape[3]) != (batch, length, head_dim):
        raise ValueError(f"k/v shape {k.shape} does not match q shape {q.shape}")
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} k/v heads")
    if segment_ids.shape != (batch, length):
        raise ValueError(f"segment_ids shape {segment_ids.shape} is not (batch, length) = {(batch, length)}")
    if window is not None and (len(window) != 2 or min(window) < 0):
        raise ValueError(f"window must be (left, right) with both >= 0, got {window}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"attention dropout rate must be in [0, 1), got {dropout_rate}")


def _zero_padding_queries(context, segment_ids):
    return context * (segment_ids > 0)[:, :, None, None].astype(context.dtype)


def _window_mask(length, window):
    """Boolean [T, T]: key j is inside query i's window."""
    offset = jnp.arange(length)[None, :] - jnp.arange(length)[:, None]  # j - i
    left, right = window
    return (offset >= -left) & (offset <= right)


def _pad_time(arrays, segment_ids, length):
    """Right-pad the T axis (axis 1) to `length`; the new positions get segment id 0 (padding)."""
    extra = length - segment_ids.shape[1]
    if extra == 0:
        return arrays, segment_ids
    pad = lambda x: jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
    return [pad(x) for x in arrays], pad(segment_ids)


# ----------------------------------------------------------------------------------------------------------
# "xla"


def _xla_attention(q, k, v, segment_ids, *, packed, window, bias, scale, dropout_rate, dropout_rng):
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    grouped_q = q.reshape(batch, length, kv_heads, groups, head_dim)
    scores = jnp.einsum("btkgh,bskh->bkgts", grouped_q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        scores = scores + _grouped_bias(bias, kv_heads, groups)
    scores = jnp.where(_allowed_keys(segment_ids, packed, window), scores, _MASKED_SCORE)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    if dropout_rate > 0.0:
        probs = _drop_probabilities(probs, dropout_rate, dropout_rng)
    context = jnp.einsum("bkgts,bskh->btkgh", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return context.reshape(batch, length, heads, head_dim)


def _allowed_keys(segment_ids, packed, window):
    """Boolean, broadcastable to the grouped scores [B, K, G, T, T]."""
    if packed:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        allowed = same & (segment_ids[:, :, None] > 0)
    else:
        # One example per row: masking padding keys is enough; padding queries are zeroed afterwards.
        allowed = (segment_ids > 0)[:, None, :]
    if window is not None:
        allowed = allowed & _window_mask(segment_ids.shape[1], window)[None]
    return allowed[:, None, None]


def _grouped_bias(bias, kv_heads, groups):
    """Bias broadcastable to [B, N, T, T] -> broadcastable to [B, K, G, T, T], in float32."""
    bias = jnp.asarray(bias, jnp.float32)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    batch, heads, queries, keys = bias.shape
    if heads == 1:
        return bias[:, :, None]
    return bias.reshape(batch, kv_heads, groups, queries, keys)


def _drop_probabilities(probs, rate, rng):
    """Dropout on grouped [B, K, G, Q, T] probabilities with the mask of their [B, K * G, Q, T] view, the one
    masked_attention draws for the same heads."""
    batch, kv_heads, groups, queries, keys = probs.shape
    heads_view = probs.reshape(batch, kv_heads * groups, queries, keys)
    return drop(heads_view, rate, rng).reshape(probs.shape)


# ----------------------------------------------------------------------------------------------------------
# "cudnn" (and its argument preparation, which the "xla" implementation of the same call checks on CPU)


def _dot_product_attention(q, k, v, segment_ids, *, window, scale, implementation):
    """jax.nn.dot_product_attention for padded rows (packed=False): lengths instead of a mask."""
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=implementation,
                                        **_seq_length_arguments(segment_ids, window))


def _seq_length_arguments(segment_ids, window):
    lengths = jnp.sum(segment_ids > 0, axis=1, dtype=jnp.int32)
    return dict(query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                local_window_size=None if window is None else tuple(int(w) for w in window))


# ----------------------------------------------------------------------------------------------------------
# "pallas"


def _pallas_kernel(backend) -> str:
    return "triton" if backend == "gpu" else "splash"


def _pallas_attention(q, k, v, segment_ids, *, window, scale, backend):
    interpret = backend == "cpu"
    if _pallas_kernel(backend) == "triton":
        return _triton_attention(q, k, v, segment_ids, scale=scale, interpret=interpret)
    return _splash_attention(q, k, v, segment_ids, window=window, scale=scale, interpret=interpret)


def _splash_attention(q, k, v, segment_ids, *, window, scale, interpret):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # Pallas only where it runs

    length = q.shape[1]
    padded = -(-length // 128) * 128  # the kernel's kv compute block is a multiple of 128 lanes
    (q, k, v), ids = _pad_time([q, k, v], segment_ids, padded)
    kernel = _splash_kernel(padded, q.shape[2], None if window is None else tuple(window), interpret)
    # The kernel takes one example, heads first ([N, T, H]), and applies no scale of its own.
    q = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    one_example = lambda q, k, v, ids: kernel(q, k, v, segment_ids=splash.SegmentIds(ids, ids))
    context = jax.vmap(one_example)(q, k, v, ids)
    return jnp.swapaxes(context, 1, 2)[:, :length]


@functools.lru_cache(maxsize=64)
def _splash_kernel(length, heads, window, interpret):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # Pallas only where it runs

    if window is None:
        head_mask = splash.FullMask((length, length))
    else:
        head_mask = splash.LocalMask((length, length), window_size=window, offset=0)
    block = next(b for b in (512, 256, 128) if length % b == 0)
    blocks = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                               block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                               block_kv_dq=block)
    # The kernel holds its mask tables as arrays; made under a trace they would be tracers, and this
    # cache would hand them to the next trace.
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha_single_device(splash.MultiHeadMask([head_mask] * heads),
                                                    block_sizes=blocks, interpret=interpret)


def _triton_attention(q, k, v, segment_ids, *, scale, interpret):
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention  # Pallas only where it runs

    length, heads, kv_heads = q.shape[1], q.shape[2], k.shape[2]
    # Triton tiles are powers of two (>= 16 for tl.dot); the kernel's default q/k tile is 128.
    padded = max(16, 1 << (length - 1).bit_length()) if length <= 128 else -(-length // 128) * 128
    (q, k, v), ids = _pad_time([q, k, v], segment_ids, padded)
    k, v = jnp.repeat(k, heads // kv_heads, axis=2), jnp.repeat(v, heads // kv_heads, axis=2)
    context = gpu_attention.mha(q, k, v, ids, sm_scale=scale, interpret=interpret)
    return context[:, :length]
