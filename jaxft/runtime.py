"""Process set-up that every command shares: multi-host initialisation, logging, the compilation cache."""

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
    """jaxft's log lines on stderr (and workdir/train.log on process 0), once per process."""
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    root = logging.getLogger("jaxft")
    root.setLevel(logging.INFO)
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
