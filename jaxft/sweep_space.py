"""Search spaces for `python -m jaxft.main sweep`: what a space file returns, and the trials it gives.

A space file is Python with a function `space()` returning {dotted config key: dimension or fixed value}:

    from jaxft.sweep_space import grid, loguniform

    def space():
        return {"optim.learning_rate": loguniform(1e-5, 3e-4), "train.num_epochs": grid([5, 10])}

Dimensions: grid(values) (every value), choice(values), uniform(low, high), loguniform(low, high),
randint(low, high) (inclusive). Trials:
  - only grids (and fixed values): the cartesian product, in the order the keys are written
    (--trials N keeps the first N);
  - any random dimension: N trials (--trials, default 10); trial i takes the grid product's combination
    i mod size and draws the random dimensions from numpy's generator seeded with (seed, i), so a trial's
    values do not depend on how many trials are asked for (a longer sweep extends a shorter one).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DEFAULT_RANDOM_TRIALS = 10


class SpaceError(ValueError):
    """A space file that cannot be used: one line naming the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Grid:
    values: tuple

    def describe(self) -> str:
        return f"grid({list(self.values)})"


@dataclasses.dataclass(frozen=True)
class Choice:
    values: tuple

    def sample(self, rng: np.random.Generator):
        return self.values[int(rng.integers(len(self.values)))]

    def describe(self) -> str:
        return f"choice({list(self.values)})"


@dataclasses.dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    log: bool = False

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def describe(self) -> str:
        return f"{'loguniform' if self.log else 'uniform'}({self.low}, {self.high})"


@dataclasses.dataclass(frozen=True)
class RandInt:
    low: int
    high: int

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def describe(self) -> str:
        return f"randint({self.low}, {self.high})"


def grid(values: Sequence) -> Grid:
    values = tuple(values)
    if not values:
        raise SpaceError("grid() needs at least one value")
    return Grid(values)


def choice(values: Sequence) -> Choice:
    values = tuple(values)
    if not values:
        raise SpaceError("choice() needs at least one value")
    return Choice(values)


def uniform(low: float, high: float) -> Uniform:
    if not low < high:
        raise SpaceError(f"uniform({low}, {high}): low must be below high")
    return Uniform(float(low), float(high))


def loguniform(low: float, high: float) -> Uniform:
    if not 0 < low < high:
        raise SpaceError(f"loguniform({low}, {high}): needs 0 < low < high")
    return Uniform(float(low), float(high), log=True)


def randint(low: int, high: int) -> RandInt:
    if not low <= high:
        raise SpaceError(f"randint({low}, {high}): low must not exceed high")
    return RandInt(int(low), int(high))


RANDOM = (Choice, Uniform, RandInt)


def load_space(path: str | Path) -> dict[str, Any]:
    """Run a space file and return its space() (keys checked to be dotted config names)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"--space: file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"jaxft_sweep_space_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise SpaceError(f"{path}: could not be run ({type(err).__name__}: {err})") from None
    function = getattr(module, "space", None) or getattr(module, "get_space", None)
    if not callable(function):
        raise SpaceError(f"{path}: defines no space() function returning {{config key: dimension}}")
    space = function()
    if not isinstance(space, dict) or not space:
        raise SpaceError(f"{path}: space() must return a non-empty dict {{config key: dimension}}, got {space!r}")
    for key in space:
        if not isinstance(key, str) or not key or key.startswith("."):
            raise SpaceError(f"{path}: space key {key!r} is not a dotted config key such as 'optim.learning_rate'")
    return space


def swept_keys(space: dict[str, Any]) -> list[str]:
    """Keys that vary between trials (grids of one value and fixed values do not)."""
    return [k for k, v in space.items() if isinstance(v, RANDOM) or (isinstance(v, Grid) and len(v.values) > 1)]


def is_random(space: dict[str, Any]) -> bool:
    return any(isinstance(v, RANDOM) for v in space.values())


def trials(space: dict[str, Any], count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The trials' overrides ({key: value}, in the space's key order); see the module docstring."""
    grid_keys = [k for k, v in space.items() if isinstance(v, Grid)]
    combinations = list(itertools.product(*(space[k].values for k in grid_keys)))
    random = is_random(space)
    if count is None:
        count = DEFAULT_RANDOM_TRIALS if random else len(combinations)
    if count <= 0:
        raise SpaceError(f"--trials must be positive, got {count}")
    if not random:
        count = min(count, len(combinations))
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        picked = dict(zip(grid_keys, combinations[i % len(combinations)]))
        values = {}
        for key, dimension in space.items():
            if isinstance(dimension, Grid):
                values[key] = picked[key]
            elif isinstance(dimension, RANDOM):
                values[key] = dimension.sample(rng)
            else:
                values[key] = dimension
        out.append({k: _plain(v) for k, v in values.items()})
    return out


def _plain(value):
    """numpy scalars -> Python values (JSON, repr and config flags want those)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(space: dict[str, Any]) -> dict[str, str]:
    return {k: v.describe() if hasattr(v, "describe") else repr(v) for k, v in space.items()}
