"""A synthetic CoNLL corpus that a tiny random BERT learns in a few epochs: names, multi-word places and
organisations from fixed lists in a few sentence patterns, grouped into -DOCSTART- documents."""

from __future__ import annotations

import random
from pathlib import Path

FIRST = ["john", "mary", "peter", "anna", "lucas", "maria", "omar", "yuki"]
LAST = ["smith", "jones", "brown", "garcia", "tanaka", "novak"]
PLACES = [["paris"], ["berlin"], ["london"], ["madrid"], ["new", "york"], ["buenos", "aires"], ["los", "angeles"]]
ORGS = [["acme"], ["globex"], ["initech"], ["umbrella", "corp"], ["stark", "industries"]]
FILLER = ["today", "again", "yesterday", "with", "friends", "later", "now", "quickly"]
LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def _entity(words: list[str], kind: str) -> list[tuple[str, str]]:
    return [(word, ("B-" if i == 0 else "I-") + kind) for i, word in enumerate(words)]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    person = _entity([rng.choice(FIRST)] + [rng.choice(LAST)] * rng.randint(0, 1), "PER")
    place = _entity(rng.choice(PLACES), "LOC")
    org = _entity(rng.choice(ORGS), "ORG")
    filler = [(rng.choice(FILLER), "O")]
    pattern = rng.randrange(4)
    if pattern == 0:
        return person + [("visited", "O")] + place + filler
    if pattern == 1:
        return [("we", "O"), ("met", "O")] + person + [("in", "O")] + place
    if pattern == 2:
        return person + [("works", "O"), ("for", "O")] + org + [("in", "O")] + place
    return [("the", "O"), ("office", "O"), ("of", "O")] + org + filler


def write_corpus(path: Path, sentences: int, *, seed: int = 0, per_document: int = 5, long_sentences: int = 0) -> Path:
    """`sentences` sentences, a -DOCSTART- line before every `per_document` of them; the first
    `long_sentences` of them are ten sentences run together (60-80 words)."""
    rng = random.Random(seed)
    lines = []
    for index in range(sentences):
        if index % per_document == 0:
            lines += ["-DOCSTART- O", ""]
        words = [pair for _ in range(10 if index < long_sentences else 1) for pair in sentence(rng)]
        lines += [f"{word}\t{tag}" for word, tag in words] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def is_valid_iob2(tags) -> bool:
    """I-X only after B-X or I-X."""
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True
