"""jaxft.models.attention on CPU: every implementation that runs here against a float64 numpy reference
(forward and a hand-written numpy backward), mask leaks, bfloat16, dropout, and choose().

Implementations run here: "xla"; "pallas" (splash attention in interpret mode, what attention() runs on
CPU); the GPU Triton kernel in interpret mode (what "pallas" runs on GPU); and jax.nn.dot_product_attention
(implementation="xla") fed the arguments the "cudnn" path prepares (cuDNN itself cannot run on CPU).
Tolerances: float32 parity 1e-5 (abs and rel); bfloat16 vs float32: context 1e-2 abs, gradients 2e-2 of the
largest gradient; dropout mean over 4000 rngs 2e-2 abs; leaks 1e-7 abs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.models.attention import (IMPLEMENTATIONS, _dot_product_attention, _triton_attention,
                                    _zero_padding_queries, attention, choose)
from jaxft.models.dropout import keep_mask

BATCH, LENGTH, HEAD_DIM = 2, 24, 8
SCALE = HEAD_DIM ** -0.5
PADDED = np.array([[1] * 20 + [0] * 4, [1] * 9 + [0] * 15], np.int32)
PACKED = np.array([[1] * 7 + [2] * 9 + [3] * 5 + [0] * 3, [1] * 12 + [2] * 12], np.int32)
ROWS = {"padded": (PADDED, False), "packed": (PACKED, True)}
HEADS = {"mha": (4, 4), "gqa": (4, 2)}
PARITY = dict(rtol=1e-5, atol=1e-5)
BF16_TOLERANCE = 1e-2  # bfloat16 context vs float32, absolute (inputs ~ N(0, 1))
BF16_GRAD_TOLERANCE = 2e-2  # bfloat16 gradients vs float32, relative to the largest float32 gradient


# ----------------------------------------------------------------------------------------------------------
# The numpy reference (float64)


def _allowed(segment_ids, window):
    seg = np.asarray(segment_ids)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
    if window is not None:
        i, j = np.arange(seg.shape[1])[:, None], np.arange(seg.shape[1])[None, :]
        allowed &= (j >= i - window[0]) & (j <= i + window[1])
    return allowed[:, None]  # [B, 1, T, T]


def _expand_heads(x, heads):
    return np.repeat(np.asarray(x, np.float64), heads // x.shape[2], axis=2)


def numpy_probabilities(q, k, segment_ids, window=None, bias=None, scale=SCALE):
    q = np.asarray(q, np.float64)
    scores = np.einsum("btnh,bsnh->bnts", q, _expand_heads(k, q.shape[2])) * scale
    if bias is not None:
        scores = scores + np.asarray(bias, np.float64)
    scores = np.where(_allowed(segment_ids, window), scores, -np.inf)
    top = scores.max(-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    total = weights.sum(-1, keepdims=True)
    return np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)  # padding queries: all zero


def numpy_attention(q, k, v, segment_ids, window=None, bias=None, scale=SCALE):
    probs = numpy_probabilities(q, k, segment_ids, window, bias, scale)
    return np.einsum("bnts,bsnh->btnh", probs, _expand_heads(v, q.shape[2]))


def numpy_attention_vjp(q, k, v, segment_ids, d_context, window=None, bias=None, scale=SCALE):
    """(dq, dk, dv, dbias) of sum(context * d_context), written out by hand."""
    heads, kv_heads = q.shape[2], k.shape[2]
    probs = numpy_probabilities(q, k, segment_ids, window, bias, scale)
    keys, values = _expand_heads(k, heads), _expand_heads(v, heads)
    d_context = np.asarray(d_context, np.float64)
    d_probs = np.einsum("btnh,bsnh->bnts", d_context, values)
    d_scores = probs * (d_probs - (probs * d_probs).sum(-1, keepdims=True))
    dq = np.einsum("bnts,bsnh->btnh", d_scores, keys) * scale
    dk = np.einsum("bnts,btnh->bsnh", d_scores, np.asarray(q, np.float64)) * scale
    dv = np.einsum("bnts,btnh->bsnh", probs, d_context)
    fold = lambda x: x.reshape(*x.shape[:2], kv_heads, heads // kv_heads, x.shape[-1]).sum(3)
    dbias = None
    if bias is not None:  # sum over the axes the bias was broadcast along
        axes = tuple(i for i, n in enumerate(np.shape(bias)) if n == 1 and d_scores.shape[i] != 1)
        dbias = d_scores.sum(axis=axes, keepdims=True)
    return dq, fold(dk), fold(dv), dbias


# ----------------------------------------------------------------------------------------------------------
# The implementations that run on CPU, as f(q, k, v, segment_ids, packed, window) -> context


def run_xla(q, k, v, segment_ids, packed, window):
    return attention(q, k, v, segment_ids=segment_ids, packed=packed, window=window, implementation="xla")


def run_pallas(q, k, v, segment_ids, packed, window):
    return attention(q, k, v, segment_ids=segment_ids, packed=packed, window=window, implementation="pallas")


def run_triton(q, k, v, segment_ids, packed, window):
    assert window is None
    context = _triton_attention(q, k, v, segment_ids, scale=SCALE, interpret=True)
    return _zero_padding_queries(context, segment_ids).astype(q.dtype)


def run_cudnn_arguments(q, k, v, segment_ids, packed, window):
    assert not packed
    context = _dot_product_attention(q, k, v, segment_ids, window=window, scale=SCALE, implementation="xla")
    return _zero_padding_queries(context, segment_ids).astype(q.dtype)


RUNNERS = {"xla": run_xla, "pallas": run_pallas, "triton": run_triton, "cudnn_arguments": run_cudnn_arguments}
# (runner, rows, window) combinations each implementation supports.
CASES = ([("xla", rows, w) for rows in ROWS for w in (None, (3, 2), (4, 0))]
         + [("pallas", rows, w) for rows in ROWS for w in (None, (3, 2))]
         + [("triton", rows, None) for rows in ROWS]
         + [("cudnn_arguments", "padded", w) for w in (None, (4, 0), (3, 2))])


def _case_id(value):
    return f"window{value[0]}-{value[1]}" if isinstance(value, tuple) else None


def make_inputs(heads, kv_heads, *, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(BATCH, LENGTH, heads, HEAD_DIM))
    k, v = (rng.normal(size=(BATCH, LENGTH, kv_heads, HEAD_DIM)) for _ in range(2))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def context_and_grads(run, q, k, v, segment_ids, packed, window, d_context):
    context, vjp = jax.vjp(lambda q, k, v: run(q, k, v, jnp.asarray(segment_ids), packed, window), q, k, v)
    return context, vjp(d_context)


def real_queries(segment_ids, x):
    """x at real query positions only (padding queries' outputs are not part of the contract)."""
    return np.asarray(x) * (np.asarray(segment_ids) > 0)[:, :, None, None]


@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("runner,rows,window", CASES, ids=_case_id)
def test_matches_numpy_reference_forward_and_gradients(runner, rows, window, heads):
    q, k, v = make_inputs(*HEADS[heads])
    segment_ids, packed = ROWS[rows]
    d_context = real_queries(segment_ids, np.random.default_rng(1).normal(size=q.shape)).astype(np.float32)
    d_context = jnp.asarray(d_context)
    context, grads = context_and_grads(RUNNERS[runner], q, k, v, segment_ids, packed, window, d_context)

    np.testing.assert_allclose(real_queries(segment_ids, context), numpy_attention(q, k, v, segment_ids, window),
                               **PARITY)
    for name, got, want in zip("qkv", grads, numpy_attention_vjp(q, k, v, segment_ids, d_context, window)):
        np.testing.assert_allclose(got, want, **PARITY, err_msg=f"d{name}")
    if runner != "xla":  # and each other: every implementation against the xla path
        xla_context, xla_grads = context_and_grads(run_xla, q, k, v, segment_ids, packed, window, d_context)
        for got, want in zip((real_queries(segment_ids, context), *grads),
                             (real_queries(segment_ids, xla_context), *xla_grads)):
            np.testing.assert_allclose(got, want, **PARITY)


@pytest.mark.parametrize("bias_shape", [(BATCH, 4, LENGTH, LENGTH), (1, 4, LENGTH, LENGTH), (1, 1, LENGTH, LENGTH)])
@pytest.mark.parametrize("rows", list(ROWS))
@pytest.mark.parametrize("heads", list(HEADS))
def test_xla_bias_forward_and_gradients(bias_shape, rows, heads):
    q, k, v = make_inputs(*HEADS[heads])
    segment_ids, packed = ROWS[rows]
    bias = jnp.asarray(np.random.default_rng(2).normal(size=bias_shape), jnp.float32)
    d_context = jnp.asarray(real_queries(segment_ids, np.random.default_rng(1).normal(size=q.shape)), jnp.float32)
    run = lambda q, k, v, bias: attention(q, k, v, segment_ids=jnp.asarray(segment_ids), packed=packed,
                                          window=(5, 3), bias=bias)
    context, vjp = jax.vjp(run, q, k, v, bias)

    np.testing.assert_allclose(real_queries(segment_ids, context), numpy_attention(q, k, v, segment_ids, (5, 3), bias),
                               **PARITY)
    want = numpy_attention_vjp(q, k, v, segment_ids, d_context, (5, 3), bias)
    for name, got, expected in zip(["q", "k", "v", "bias"], vjp(d_context), want):
        assert got.shape == np.shape(expected), name
        np.testing.assert_allclose(got, expected, **PARITY, err_msg=f"d{name}")


def test_padded_rows_give_the_same_result_through_the_packed_mask():
    q, k, v = make_inputs(4, 2)
    segment_ids = jnp.asarray(PADDED)
    as_padded = attention(q, k, v, segment_ids=segment_ids, packed=False, window=(3, 2))
    as_packed = attention(q, k, v, segment_ids=segment_ids, packed=True, window=(3, 2))
    np.testing.assert_allclose(real_queries(PADDED, as_padded), as_packed, rtol=0, atol=1e-7)


def test_padded_rows_compute_padding_queries_as_hugging_face_does():
    """xla, padded rows: a padding query attends to the row's real keys (BERT's extended attention mask),
    so hidden states match PyTorch at every position, padding included."""
    q, k, v = make_inputs(4, 4)
    context = attention(q, k, v, segment_ids=jnp.asarray(PADDED), packed=False, implementation="xla")
    real_keys = np.broadcast_to((PADDED > 0)[:, None, None, :], (BATCH, 1, LENGTH, LENGTH))
    scores = np.einsum("btnh,bsnh->bnts", np.asarray(q, np.float64), np.asarray(k, np.float64)) * SCALE
    scores = np.where(real_keys, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum("bnts,bsnh->btnh", probs, np.asarray(v, np.float64))
    np.testing.assert_allclose(context, expected, **PARITY)
    assert np.abs(np.asarray(context)[PADDED == 0]).min() > 0  # padding queries are not zeroed here


# ----------------------------------------------------------------------------------------------------------
# Leaks: a wrong mask shows up as a changed output somewhere it must not change.


def _positions(segment_ids, row, segment):
    return np.flatnonzero(segment_ids[row] == segment)


@pytest.mark.parametrize("runner,window", [("xla", None), ("xla", (3, 2)), ("pallas", None), ("pallas", (3, 2)),
                                           ("triton", None)], ids=_case_id)
def test_a_packed_segment_does_not_leak_into_its_neighbours(runner, window):
    q, k, v = make_inputs(4, 2)
    run = lambda q, k, v: RUNNERS[runner](q, k, v, jnp.asarray(PACKED), True, window)
    before = np.asarray(run(q, k, v))
    middle = _positions(PACKED, 0, 2)
    after = np.asarray(run(q, k.at[0, middle].add(3.0), v.at[0, middle].add(5.0)))

    others = np.ones(PACKED.shape, bool)
    others[0, middle] = False
    np.testing.assert_allclose(after[others], before[others], rtol=0, atol=1e-7)
    assert np.abs(after[0, middle] - before[0, middle]).min() > 1e-3  # the perturbation did reach segment 2


@pytest.mark.parametrize("runner,rows", [("xla", "padded"), ("xla", "packed"), ("pallas", "padded"),
                                         ("pallas", "packed"), ("triton", "packed"),
                                         ("cudnn_arguments", "padded")])
def test_padding_does_not_influence_real_positions(runner, rows):
    q, k, v = make_inputs(4, 2)
    segment_ids, packed = ROWS[rows]
    run = lambda q, k, v: RUNNERS[runner](q, k, v, jnp.asarray(segment_ids), packed, None)
    padding = segment_ids == 0
    noise = jnp.asarray(np.where(padding[:, :, None, None], 1e4, 0.0), jnp.float32)
    before, after = np.asarray(run(q, k, v)), np.asarray(run(q + noise, k + noise, v + noise))

    np.testing.assert_allclose(after[~padding], before[~padding], rtol=0, atol=1e-7)
    if packed or runner != "xla":  # padded rows on xla compute padding queries as HF does
        assert np.all(after[padding] == 0.0) and np.all(before[padding] == 0.0)


@pytest.mark.parametrize("runner,rows", [("xla", "packed"), ("pallas", "packed"), ("triton", "packed"),
                                         ("cudnn_arguments", "padded")])
def test_padding_queries_send_no_gradient_and_real_queries_none_into_padding(runner, rows):
    q, k, v = make_inputs(4, 2)
    segment_ids, packed = ROWS[rows]
    padding = jnp.asarray(segment_ids == 0)[:, :, None, None]
    run = lambda q, k, v: RUNNERS[runner](q, k, v, jnp.asarray(segment_ids), packed, None)

    from_padding = jax.grad(lambda q, k, v: jnp.sum(run(q, k, v) * padding * 7.0), argnums=(0, 1, 2))(q, k, v)
    for grad in from_padding:
        assert np.all(np.asarray(grad) == 0.0)
    from_real = jax.grad(lambda q, k, v: jnp.sum(run(q, k, v) ** 2 * ~padding), argnums=(0, 1, 2))(q, k, v)
    for grad in from_real:
        assert np.all(np.asarray(grad)[segment_ids == 0] == 0.0) and np.all(np.isfinite(grad))


def test_pallas_kernel_made_under_jit_serves_later_traces_and_eager_calls():
    # The splash kernel is cached per (length, heads, window); one first built inside a trace (a window no
    # other test uses) must not carry tracers into later calls.
    q, k, v = make_inputs(4, 2)
    segment_ids = jnp.asarray(PACKED[:, :20])
    run = lambda q: attention(q, k[:, :20], v[:, :20], segment_ids=segment_ids, packed=True, window=(11, 13),
                              implementation="pallas")
    first = jax.jit(run)(q[:, :20])
    np.testing.assert_allclose(jax.jit(lambda q: run(q) * 2.0)(q[:, :20]), 2.0 * first, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(run(q[:, :20]), first, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# bfloat16


@pytest.mark.parametrize("runner,rows,window", [("xla", "padded", (3, 2)), ("xla", "packed", None),
                                                ("pallas", "packed", (3, 2)), ("triton", "packed", None)],
                         ids=_case_id)
def test_bfloat16_is_close_to_float32(runner, rows, window):
    # The float32 run takes the same (bfloat16-rounded) inputs, so only the compute differs.
    segment_ids, packed = ROWS[rows]
    q, k, v = make_inputs(4, 2, dtype=jnp.bfloat16)
    d_context = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.bfloat16)
    run, upcast = RUNNERS[runner], lambda x: x.astype(jnp.float32)
    low, low_grads = context_and_grads(run, q, k, v, segment_ids, packed, window, d_context)
    high, high_grads = context_and_grads(run, *map(upcast, (q, k, v)), segment_ids, packed, window,
                                         upcast(d_context))
    assert low.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in low_grads)
    np.testing.assert_allclose(upcast(low), high, rtol=0, atol=BF16_TOLERANCE)
    for name, got, want in zip("qkv", low_grads, high_grads):
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(upcast(got), want, rtol=0, atol=BF16_GRAD_TOLERANCE * scale, err_msg=f"d{name}")


@pytest.mark.parametrize("runner", ["xla", "pallas", "triton", "cudnn_arguments"])
def test_bfloat16_scores_are_float32(runner):
    # Scores 1000 and 1001 are exact in float32 but both round to 1000 in bfloat16 (spacing 8 there):
    # float32 scores weigh the second key 0.731, bfloat16 scores would give 0.5.
    q = jnp.zeros((1, LENGTH, 1, 2), jnp.bfloat16).at[0, 0, 0].set(jnp.array([1000.0, 1.0], jnp.bfloat16))
    k = jnp.zeros((1, LENGTH, 1, 2), jnp.bfloat16).at[0, 0, 0].set(jnp.array([1.0, 0.0], jnp.bfloat16))
    k = k.at[0, 1, 0].set(jnp.array([1.0, 1.0], jnp.bfloat16))
    v = jnp.zeros((1, LENGTH, 1, 2), jnp.bfloat16).at[0, 1, 0].set(jnp.array([1.0, 1.0], jnp.bfloat16))
    segment_ids = jnp.asarray([[1, 1] + [0] * (LENGTH - 2)], jnp.int32)
    if runner == "cudnn_arguments":
        context = _dot_product_attention(q, k, v, segment_ids, window=None, scale=1.0, implementation="xla")
    elif runner == "triton":
        context = _triton_attention(q, k, v, segment_ids, scale=1.0, interpret=True)
    else:
        context = attention(q, k, v, segment_ids=segment_ids, packed=False, scale=1.0, implementation=runner)
    np.testing.assert_allclose(float(context[0, 0, 0, 0]), 1 / (1 + np.exp(-1.0)), atol=4e-3)


# ----------------------------------------------------------------------------------------------------------
# Dropout (xla only)


def _with_dropout(q, k, v, rate, rng):
    return attention(q, k, v, segment_ids=jnp.asarray(PACKED), packed=True, dropout_rate=rate, dropout_rng=rng)


def test_dropout_off_is_exactly_no_dropout():
    q, k, v = make_inputs(4, 2)
    plain = _with_dropout(q, k, v, 0.0, None)
    np.testing.assert_array_equal(_with_dropout(q, k, v, 0.0, jax.random.key(0)), plain)
    np.testing.assert_array_equal(_with_dropout(q, k, v, 0.3, None), plain)  # no rng: deterministic mode


def test_dropout_is_deterministic_for_a_fixed_rng_and_matches_numpy():
    q, k, v = make_inputs(4, 2)
    rate, key = 0.3, jax.random.key(7)
    first, second = _with_dropout(q, k, v, rate, key), _with_dropout(q, k, v, rate, key)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, _with_dropout(q, k, v, rate, jax.random.key(8)))

    keep = np.asarray(keep_mask(key, rate, (BATCH, 4, LENGTH, LENGTH)))
    probs = np.where(keep, numpy_probabilities(q, k, PACKED) / (1 - rate), 0.0)
    np.testing.assert_allclose(first, np.einsum("bnts,bsnh->btnh", probs, _expand_heads(v, 4)), **PARITY)


def test_dropout_mean_over_rngs_approaches_no_dropout():
    q, k, v = make_inputs(4, 2)
    keys = jax.random.split(jax.random.key(0), 4000)
    mean = jax.jit(jax.vmap(lambda key: _with_dropout(q, k, v, 0.1, key)))(keys).mean(0)
    np.testing.assert_allclose(mean, _with_dropout(q, k, v, 0.0, None), rtol=0, atol=2e-2)


@pytest.mark.parametrize("implementation", ["pallas", "cudnn"])
def test_dropout_is_refused_outside_xla(implementation):
    q, k, v = make_inputs(4, 2)
    with pytest.raises(ValueError, match="dropout"):
        attention(q, k, v, segment_ids=jnp.asarray(PACKED), packed=True, dropout_rate=0.1,
                  dropout_rng=jax.random.key(0), implementation=implementation)


# ----------------------------------------------------------------------------------------------------------
# choose() and argument checks

BF16, F32 = jnp.bfloat16, jnp.float32


def _pick(requested="auto", *, backend, dtype=BF16, packed=False, window=None, has_bias=False, dropout=False):
    return choose(requested, backend=backend, dtype=dtype, packed=packed, window=window, has_bias=has_bias,
                  dropout=dropout)


@pytest.mark.parametrize("request_,expected", [
    (dict(backend="gpu"), "cudnn"),
    (dict(backend="gpu", dtype=jnp.float16, window=(64, 0)), "cudnn"),
    (dict(backend="gpu", dtype=F32), "xla"),
    (dict(backend="gpu", window=(64, 64)), "xla"),
    (dict(backend="gpu", has_bias=True), "xla"),
    (dict(backend="gpu", dropout=True), "xla"),
    (dict(backend="gpu", packed=True), "pallas"),
    (dict(backend="gpu", packed=True, dtype=F32), "pallas"),
    (dict(backend="gpu", packed=True, window=(64, 64)), "xla"),
    (dict(backend="tpu"), "pallas"),
    (dict(backend="tpu", packed=True, window=(64, 64), dtype=F32), "pallas"),
    (dict(backend="tpu", has_bias=True), "xla"),
    (dict(backend="tpu", dropout=True), "xla"),
    (dict(backend="cpu"), "xla"),
    (dict(backend="cpu", packed=True), "xla"),
])
def test_auto_picks(request_, expected):
    implementation, reason = _pick(**request_)
    assert implementation == expected
    assert reason.startswith(f"{expected}: ") and len(reason) < 120


def test_auto_reasons_name_the_cause():
    assert "dropout" in _pick(backend="gpu", dropout=True)[1]
    assert "bias" in _pick(backend="tpu", has_bias=True)[1]
    assert "float32" in _pick(backend="gpu", dtype=F32)[1]
    assert "window" in _pick(backend="gpu", packed=True, window=(64, 64))[1]


@pytest.mark.parametrize("implementation,request_", [
    ("xla", dict(backend="cpu", dtype=F32, has_bias=True, dropout=True, packed=True, window=(2, 2))),
    ("cudnn", dict(backend="gpu", window=(8, 0))),
    ("pallas", dict(backend="tpu", packed=True, window=(64, 64))),
    ("pallas", dict(backend="gpu", packed=True)),
    ("pallas", dict(backend="cpu", packed=True, window=(3, 2), dtype=F32)),
])
def test_explicit_requests_that_work(implementation, request_):
    assert _pick(implementation, **request_)[0] == implementation


@pytest.mark.parametrize("implementation,request_,why", [
    ("cudnn", dict(backend="gpu", dtype=F32), "float32"),
    ("cudnn", dict(backend="gpu", packed=True), "packed"),
    ("cudnn", dict(backend="gpu", has_bias=True), "bias"),
    ("cudnn", dict(backend="gpu", dropout=True), "dropout"),
    ("cudnn", dict(backend="gpu", window=(64, 64)), "window"),
    ("cudnn", dict(backend="cpu"), "GPU"),
    ("cudnn", dict(backend="tpu"), "GPU"),
    ("pallas", dict(backend="tpu", has_bias=True), "bias"),
    ("pallas", dict(backend="gpu", dropout=True), "dropout"),
    ("pallas", dict(backend="gpu", packed=True, window=(64, 64)), "window"),
    ("flash", dict(backend="gpu"), "one of"),
])
def test_impossible_requests_raise(implementation, request_, why):
    with pytest.raises(ValueError, match=why):
        _pick(implementation, **request_)


def test_implementation_names():
    assert IMPLEMENTATIONS == ("auto", "xla", "cudnn", "pallas")


def test_auto_on_cpu_is_the_xla_path_and_cudnn_is_refused():
    q, k, v = make_inputs(4, 2)
    segment_ids = jnp.asarray(PACKED)
    auto = attention(q, k, v, segment_ids=segment_ids, packed=True, implementation="auto")
    np.testing.assert_array_equal(auto, attention(q, k, v, segment_ids=segment_ids, packed=True))
    with pytest.raises(ValueError, match="cudnn"):
        attention(q.astype(BF16), k.astype(BF16), v.astype(BF16), segment_ids=jnp.asarray(PADDED), packed=False,
                  implementation="cudnn")


@pytest.mark.parametrize("change,why", [
    (dict(k=jnp.zeros((BATCH, LENGTH, 3, HEAD_DIM))), "multiple"),
    (dict(segment_ids=jnp.zeros((BATCH, LENGTH + 1), jnp.int32)), "segment_ids"),
    (dict(window=(-1, 2)), "window"),
    (dict(dropout_rate=1.0), "dropout"),
])
def test_bad_arguments_raise(change, why):
    q, k, v = make_inputs(4, 2)
    arguments = dict(q=q, k=k, v=v, segment_ids=jnp.asarray(PADDED), packed=False) | change
    if "k" in change:
        arguments["v"] = change["k"]
    with pytest.raises(ValueError, match=why):
        attention(**arguments)
