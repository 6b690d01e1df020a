"""Process set-up that every command shares: multi-host initialisation, logging, the compilation cache, the
backend and devices in use, and the compute dtype and matmul precision a run resolves to."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import jax
from absl import logging as absl_logging

log = logging.getLogger("jaxft")


def initialize_distributed(mesh_config) -> None:
    """Multi-host: every process runs the same command; JAX connects them before any device is used."""
    if not (mesh_config.distributed or os.environ.get("JAXFT_DISTRIBUTED") == "1"):
        return
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
    jax.distributed.initialize(coordinator_address=mesh_config.coordinator_address or None,
                               num_processes=mesh_config.num_processes or None,
                               process_id=mesh_config.process_id)


def setup_logging(workdir: Path | None = None) -> None:
    """jaxft's log lines on stderr (and workdir/train.log on process 0), once per process. Process 0 logs at
    INFO; the other processes of a multi-host run at WARNING, so each line appears once per run."""
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    root = logging.getLogger("jaxft")
    root.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    if not any(getattr(h, "_jaxft", False) for h in root.handlers):
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
        if workdir is not None and jax.process_index() == 0:
            handlers.append(logging.FileHandler(Path(workdir) / "train.log"))
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
            handler._jaxft = True
            root.addHandler(handler)
    root.propagate = False


def enable_compilation_cache() -> None:
    """Compiled programs are cached on disk (JAXFT_COMPILATION_CACHE, default ~/.cache/jaxft/xla; "0" turns it
    off), so a resumed or repeated run, predict and serve skip XLA compilation of shapes seen before."""
    cache = os.environ.get("JAXFT_COMPILATION_CACHE", os.path.expanduser("~/.cache/jaxft/xla"))
    if cache and cache != "0":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


# ---------------------------------------------------------------------------------------------- devices

ACCELERATORS = ("gpu", "tpu")


def visible_accelerator() -> str | None:
    """"gpu" or "tpu" when this machine has one (whether or not JAX uses it), else None: NVIDIA device files
    or driver, TPU device files or a TPU VM's environment."""
    if Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/version").exists():
        return "gpu"
    if any(Path("/dev").glob("accel[0-9]*")) or os.environ.get("TPU_ACCELERATOR_TYPE") or Path("/dev/vfio/0").exists():
        return "tpu"
    return None


def describe_devices() -> str:
    """The backend and devices JAX uses, e.g. "backend gpu: 1 device (NVIDIA H200), 1 process"."""
    devices = jax.devices()
    kinds = sorted({device.device_kind for device in devices})
    return (f"backend {jax.default_backend()}: {len(devices)} device{'s' if len(devices) > 1 else ''} "
            f"({', '.join(kinds)}), {jax.process_count()} process{'es' if jax.process_count() > 1 else ''}")


def check_accelerator_in_use() -> str | None:
    """A warning when the machine has a GPU or TPU that JAX is not using (a CPU-only jaxlib), else None."""
    present = visible_accelerator()
    if present is None or jax.default_backend() in ACCELERATORS:
        return None
    extra = "cuda13' (or 'jaxft[cuda12]'" if present == "gpu" else "tpu'"
    return (f"this machine has a {present.upper()} but JAX runs on {jax.default_backend()}: install the "
            f"accelerator build, e.g. pip install 'jaxft[{extra}) (see README, Install)")


# ---------------------------------------------------------------------------------------------- compute

def compute_dtype(name: str) -> str:
    """model.dtype: "auto" is bfloat16 on GPU/TPU (parameters stay float32) and float32 on CPU."""
    if name != "auto":
        return name
    return "bfloat16" if jax.default_backend() in ACCELERATORS else "float32"


PRECISION_MEANING = {
    "cpu": "full float32 on CPU whatever is asked",
    "gpu": "TF32 for float32 matmuls on Ampere and newer GPUs",
    "tpu": "one bfloat16 pass for float32 matmuls on TPU",
}


def matmul_precision(name: str) -> str:
    """model.matmul_precision: "auto" is "highest" (full float32) on CPU and JAX's "default" on GPU/TPU,
    which for float32 matmuls means TF32 on recent GPUs and one bfloat16 pass on TPU (bfloat16 compute is
    unaffected). Applied process-wide through jax_default_matmul_precision."""
    resolved = ("default" if jax.default_backend() in ACCELERATORS else "highest") if name == "auto" else name
    jax.config.update("jax_default_matmul_precision", None if resolved == "default" else resolved)
    return resolved


def describe_compute(model_config) -> tuple[str, str, str]:
    """(compute dtype, matmul precision, one start-up log line) for the config's model group."""
    dtype = compute_dtype(model_config.dtype)
    precision = matmul_precision(model_config.matmul_precision)
    meaning = PRECISION_MEANING.get(jax.default_backend(), "")
    line = (f"compute {dtype} (model.dtype={model_config.dtype}); matmul precision {precision} "
            f"(model.matmul_precision={model_config.matmul_precision}"
            + (f"; 'default' here means {meaning})" if precision == "default" and meaning else ")"))
    return dtype, precision, line


def attention_dropout(value: float | None, backend: str | None = None) -> tuple[float | None, str | None]:
    """model.attention_dropout: None is 0.0 on GPU/TPU, so that training takes the fused attention kernels
    (dropout on attention probabilities needs the explicit path), and the checkpoint's own rate on CPU, where
    no kernel is fused. Returns (the rate to build the model with; None = the checkpoint's, a log line or
    None). Hidden dropout is untouched. The recipes' dev/test metrics with 0.0 and with the checkpoints' 0.1
    are in the README (Scale out: Attention)."""
    backend = backend or jax.default_backend()
    if value is not None or backend not in ACCELERATORS:
        return value, None
    return 0.0, (f"attention dropout 0.0 on {backend} (model.attention_dropout=None: the fused kernels need "
                 f"none; set it to train with the checkpoint's rate on the explicit path)")


BUCKET_MULTIPLE = {"cpu": 16, "gpu": 128, "tpu": 128}


def bucket_multiple(value: int | None) -> int:
    """data.bucket_multiple: None is 16 on CPU (little padding; a compile costs seconds) and 128 on GPU/TPU
    (padding is cheap there and a compile costs tens of seconds): at most max_length / multiple shapes."""
    return value if value is not None else BUCKET_MULTIPLE.get(jax.default_backend(), 16)
