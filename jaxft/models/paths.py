"""Module paths: NNX path tuples as dotted names ("bert.encoder.layer.0.attention.self.query"), and finding or
replacing the module at a path (LoRA wrapping, int8 swaps, heads placed under Hugging Face names)."""

from __future__ import annotations

from flax import nnx


def dotted(path) -> str:
    return ".".join(str(part) for part in path)


def get_module(root: nnx.Module, path: tuple):
    node = root
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def set_module(root: nnx.Module, path: tuple, module) -> None:
    parent = get_module(root, path[:-1])
    if isinstance(path[-1], int):
        parent[path[-1]] = module
    else:
        setattr(parent, path[-1], module)


def split_dotted(name: str) -> tuple:
    """"encoder.layer.3.attention" -> ("encoder", "layer", 3, "attention"): list indices as ints."""
    return tuple(int(part) if part.isdigit() else part for part in name.split("."))


class PathGroup(nnx.Module):
    """An empty module standing for an intermediate name of a Hugging Face path ("embeddings" in
    "embeddings.norm"), created by `place`."""


def place(root: nnx.Module, name: str, module: nnx.Module) -> None:
    """Put `module` at the dotted `name` under root, creating empty PathGroups for missing parents."""
    node = root
    *parents, last = name.split(".")
    for part in parents:
        if not hasattr(node, part):
            setattr(node, part, PathGroup())
        node = getattr(node, part)
    setattr(node, last, module)
