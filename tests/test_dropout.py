"""jaxft's dropout masks (two 16-bit uniforms per threefry value) and the Dropout module built on them."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxft.models.dropout import Dropout, drop, keep_mask

SHAPE = (64, 48, 384)  # 1.18M elements: the kept fraction's standard error is about 3e-4 at rate 0.1


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_kept_fraction_is_one_minus_rate(rate):
    keep = np.asarray(keep_mask(jax.random.key(0), rate, SHAPE))
    assert keep.shape == SHAPE and keep.dtype == np.bool_
    expected = round((1 - rate) * 2 ** 16) / 2 ** 16
    standard_error = (expected * (1 - expected) / keep.size) ** 0.5
    assert abs(keep.mean() - expected) < 5 * standard_error, (keep.mean(), expected)


def test_even_and_odd_positions_are_independent():
    """Both halves of each 32-bit value are used, and not the same half twice: P(both kept) = q**2."""
    rate = 0.5
    keep = np.asarray(keep_mask(jax.random.key(1), rate, SHAPE)).reshape(-1, 2)
    both = np.mean(keep[:, 0] & keep[:, 1])
    assert abs(both - 0.25) < 5 * (0.25 * 0.75 / keep.shape[0]) ** 0.5, both
    assert abs(keep[:, 0].mean() - 0.5) < 0.005 and abs(keep[:, 1].mean() - 0.5) < 0.005


def test_mask_is_a_function_of_the_key():
    first, again = (np.asarray(keep_mask(jax.random.key(3), 0.1, SHAPE)) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    other = np.asarray(keep_mask(jax.random.key(4), 0.1, SHAPE))
    assert 0.1 < np.mean(first != other) < 0.25  # independent masks differ in 2 q (1 - q) = 18% of places


SHARDED_CHECK = """
import jax, numpy as np
from jaxft.models.dropout import keep_mask
key = jax.random.key(5)
eager = np.asarray(keep_mask(key, 0.1, (8, 16, 32)))
mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None, "model"))
sharded = jax.jit(lambda k: keep_mask(k, 0.1, (8, 16, 32)), out_shardings=spec)(key)
assert len(sharded.sharding.device_set) == 8
print("same" if np.array_equal(np.asarray(sharded), eager) else "different")
"""


def test_mask_is_the_same_under_jit_and_when_sharded_over_eight_devices():
    key = jax.random.key(5)
    eager = np.asarray(keep_mask(key, 0.1, (8, 16, 32)))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda k: keep_mask(k, 0.1, (8, 16, 32)))(key)), eager)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, "-c", SHARDED_CHECK], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "same"


def test_odd_last_axis_falls_back_to_bernoulli():
    key = jax.random.key(6)
    np.testing.assert_array_equal(np.asarray(keep_mask(key, 0.2, (4, 7))),
                                  np.asarray(jax.random.bernoulli(key, 0.8, (4, 7))))


def test_drop_scales_kept_values_and_zeros_the_rest():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 40)), jnp.float32)
    key, rate = jax.random.key(7), 0.25
    keep = np.asarray(keep_mask(key, rate, x.shape))
    out = np.asarray(drop(x, rate, key))
    np.testing.assert_allclose(out[keep], np.asarray(x)[keep] / (1 - rate), rtol=1e-6)
    assert np.all(out[~keep] == 0) and 0 < (~keep).sum() < keep.sum()


def test_drop_is_unbiased():
    x = jnp.full((16, 64), 2.0)
    keys = jax.random.split(jax.random.key(8), 2000)
    mean = np.asarray(jax.jit(jax.vmap(lambda k: drop(x, 0.1, k)))(keys).mean(0))
    # per element: 2000 draws of 2 / 0.9 kept with probability 0.9, standard error 0.0149; all 1024: 0.00047
    np.testing.assert_allclose(mean, 2.0, atol=5 * 0.0149)
    assert abs(mean.mean() - 2.0) < 5 * 0.00047


def test_module_draws_from_its_stream_and_respects_deterministic_and_broadcast_dims():
    x = jnp.ones((4, 6, 8))
    layer = Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    expected_key = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0)).rngs()  # the key nnx.Dropout would draw first
    np.testing.assert_array_equal(np.asarray(layer(x, deterministic=False)),
                                  np.asarray(drop(x, 0.5, expected_key)))
    np.testing.assert_array_equal(np.asarray(layer(x, deterministic=True)), np.asarray(x))
    shared = Dropout(0.5, broadcast_dims=(1,), rngs=nnx.Rngs(dropout=1))(x, deterministic=False)
    shared = np.asarray(shared)
    assert np.all(shared == shared[:, :1, :]) and 0 < np.mean(shared == 0) < 1
    np.testing.assert_array_equal(np.asarray(Dropout(1.0, rngs=nnx.Rngs(0))(x, deterministic=False)), 0.0)
