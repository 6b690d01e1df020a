"""Device mesh and logical-axis sharding for parameters, optimizer state and batches.

Kernels carry logical axis names ("embed", "mlp", "heads", "vocab"; see models/encoder.py). Rules in the
config map them to mesh axes (flax lm1b style: embed -> fsdp, mlp/heads/vocab -> tensor). A dimension
whose size the mesh axis does not divide stays replicated. The batch is split over (data, fsdp). One CPU
is a 1x1x1 mesh: the same code path, with trivial shardings.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxft.config import ConfigError
from jaxft.models.paths import dotted

log = logging.getLogger("jaxft.train")
MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
DEFAULT_RULES = "embed=fsdp,mlp=tensor,heads=tensor,vocab=tensor"


class MeshError(ConfigError):
    """A mesh shape that does not fit the devices or the batch."""


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    if sum(size == -1 for size in sizes) > 1:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1 (fill)")
    known = math.prod(size for size in sizes if size != -1)
    if any(size == 0 or size < -1 for size in sizes) or num_devices % known:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices")
    sizes = [num_devices // known if size == -1 else size for size in sizes]
    if math.prod(sizes) != num_devices:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} of {num_devices} devices; "
                        "set one axis to -1 to fill")
    return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def parse_rules(text: str) -> dict[str, str | None]:
    rules = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, axis = item.partition("=")
        axis = axis.strip() or None
        if axis not in (None, *MESH_AXES):
            raise MeshError(f"mesh rule {item!r}: mesh axis must be one of {', '.join(MESH_AXES)}")
        rules[name.strip()] = axis
    return rules


def check_model_fits_mesh(config, mesh, rules: dict) -> None:
    """Refuse a mesh that would cut what must stay whole: an attention head (its columns are split across
    devices, which costs extra all-gathers in every layer), or leave a large dimension silently replicated
    (the intermediate width, the vocabulary rows). The error names the shapes and the keys to change."""
    wholes = (("heads", config.num_heads, "attention heads"),
              ("mlp", config.intermediate_size, "intermediate (MLP) columns"),
              ("vocab", config.vocab_size, "vocabulary rows"))
    rotary = getattr(config, "rotary", None)
    if rotary is not None and rotary.num_kv_heads != config.num_heads:  # grouped-query attention's k/v heads
        wholes += (("heads", rotary.num_kv_heads, "key/value heads"),)
    for logical, size, what in wholes:
        axis = rules.get(logical)
        if axis is None or mesh.shape[axis] == 1 or size % mesh.shape[axis] == 0:
            continue
        divisors = [d for d in range(2, min(size, 64) + 1) if size % d == 0][:6]
        raise MeshError(f"mesh.{axis}={mesh.shape[axis]} does not divide the model's {size} {what} (mesh.rules "
                        f"maps {logical!r} to {axis!r}): use a mesh.{axis} that divides {size}"
                        + (f" (e.g. {', '.join(map(str, divisors))})" if divisors else "")
                        + f", or set '{logical}=' in mesh.rules to keep them whole on every device")


_replication_logged: set = set()


def spec_for(shape: tuple[int, ...], logical: tuple | None, rules: dict, mesh) -> P:
    if not logical:
        return P()
    axes = []
    for size, name in zip(shape, logical):
        axis = rules.get(name) if name else None
        if axis is not None and (size % mesh.shape[axis] or axis in axes):
            _log_replication_once(name, size, axis, mesh.shape[axis], "already used" if axis in axes else "")
            axis = None  # not divisible (or axis already used): keep this dimension whole
        axes.append(axis)
    return P(*axes)


def _log_replication_once(name, size, axis, shards, reason) -> None:
    key = (name, size, axis, shards)
    if key in _replication_logged:
        return
    _replication_logged.add(key)
    why = f"mesh axis {axis!r} is {reason} by another dimension" if reason else f"{size} % {shards} != 0"
    log.info("sharding: a %r dimension of %d stays whole (replicated over %r: %s)", name, size, axis, why)


def variable_shardings(template, mesh, rules: dict) -> dict[str, NamedSharding]:
    """Flat {path: NamedSharding} for a ModelParts template (list of (path, Variable))."""
    shardings = {}
    for path, variable in template:
        value = variable.get_value()
        shape = jax.random.key_data(value).shape if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key) \
            else value.shape
        logical = variable.get_metadata().get("out_sharding")
        spec = spec_for(shape, logical, rules, mesh) if len(shape) == len(logical or ()) else P()
        shardings[dotted(path)] = NamedSharding(mesh, spec)
    return shardings


def optimizer_shardings(tx: optax.GradientTransformation, params: dict, param_shardings: dict, mesh) -> Any:
    """Moments sharded like their parameters; counters and other scalars replicated."""
    abstract = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(tx, lambda _, sharding: sharding, abstract, param_shardings,
                                 transform_non_params=lambda _: replicated)


def batch_sharding(mesh, ndim: int, batch_axis: int) -> NamedSharding:
    spec = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def batch_rows_per_shard(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def put_batch(batch: dict[str, np.ndarray], mesh, batch_axis: int) -> dict[str, jax.Array]:
    """Host arrays -> global arrays split over (data, fsdp). In a multi-process run every process holds the
    same global batch (built deterministically) and hands over only its own rows."""
    out = {}
    for key, value in batch.items():
        sharding = batch_sharding(mesh, value.ndim, batch_axis)
        if jax.process_count() == 1:
            out[key] = jax.device_put(value, sharding)
        else:
            out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
    return out


def per_device_bytes(tree) -> int:
    """Bytes that the largest-loaded device holds for `tree` (sharded arrays count their shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "addressable_shards") and leaf.addressable_shards:
            total += leaf.addressable_shards[0].data.nbytes
        else:
            total += np.asarray(leaf).nbytes
    return total


def describe(mesh, params, opt_state) -> str:
    shape = ", ".join(f"{axis}={mesh.shape[axis]}" for axis in MESH_AXES)
    return (f"mesh ({shape}) over {mesh.devices.size} {jax.devices()[0].platform} device(s); per device: "
            f"parameters {per_device_bytes(params) / 2**20:.1f} MiB, optimizer state "
            f"{per_device_bytes(opt_state) / 2**20:.1f} MiB")
