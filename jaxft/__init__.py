"""jaxft: fine-tune BERT-family encoders in JAX/Flax NNX.

    import jaxft
    results = jaxft.train(jaxft.recipe("ner"), "runs/ner", train_dataset=ds["train"])
    jaxft.evaluate("runs/ner/export", ds["test"])
    jaxft.pipeline("runs/ner/export")("John lives in Paris.")

train, evaluate, pipeline and recipe are jaxft.api's; they load (with jax) on first use, so `import jaxft`
stays cheap. `train` and `evaluate` are also the names of subpackages (jaxft/train/: the training loop,
jaxft/evaluate/: metrics): those two packages are callable, a call going to jaxft.api.train / evaluate, and
their modules import as ever (`from jaxft.train.loop import Trainer`).
"""

import importlib
import inspect
import sys
import types

__version__ = "0.1.0"

API = ("train", "evaluate", "pipeline", "recipe")
CALLABLE_PACKAGES = ("train", "evaluate")  # subpackages that share their name with an API function
__all__ = [*API, "__version__"]


def _api(name: str):
    return getattr(importlib.import_module("jaxft.api"), name)


class _CallablePackage(types.ModuleType):
    """A subpackage whose call is the API function of the same name (jaxft.train(...) is jaxft.api.train)."""

    def __call__(self, *args, **kwargs):
        return _api(self.__name__.rpartition(".")[2])(*args, **kwargs)

    @property
    def __signature__(self):
        return inspect.signature(_api(self.__name__.rpartition(".")[2]))


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the import system sets jaxft.train / jaxft.evaluate to the subpackage once it is imported
        if name in CALLABLE_PACKAGES and isinstance(value, types.ModuleType):
            value.__class__ = _CallablePackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in CALLABLE_PACKAGES:
        return importlib.import_module(f"jaxft.{name}")  # callable once imported (_Package.__setattr__)
    if name in API:
        return _api(name)
    raise AttributeError(f"module 'jaxft' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
