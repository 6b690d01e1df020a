"""Training-data augmentation: EDA-style edits for text classification, mention and label-wise token
replacement for NER. Off by default (``augment.methods=""``); applied once to the TRAIN split right after it
is read, before tokenisation; dev and test are never touched.

Operations (``augment.methods``, comma-separated; each ``*_rate`` is that operation's alpha):

    classification (EDA, Wei & Zou 2019), on the whitespace-split words of a text:
      swap     n = max(1, int(swap_rate * words)) swaps of two random positions (the multiset is kept)
      delete   each word dropped with probability delete_rate; at least one dropped, never all (a text
               of one word is left as it is)
      insert   n = max(1, int(insert_rate * words)) insertions at random positions, each a synonym of a
               random word of the text that has one in the lexicon, else a random lexicon word
      synonym  n = max(1, int(synonym_rate * words)) words that the lexicon knows replaced by one of their
               synonyms (matching the word's capitalisation; punctuation around the word is kept)
    NER (Dai & Adel 2020), on a sentence's tokens and tags:
      mention  each entity mention replaced, with probability mention_rate (at least one), by another
               mention of the same type seen in the train set; the new mention is tagged for its own
               length in the sentence's scheme (BIO, IOB1, IOBES, BILOU), so the sequence stays valid
      token    each token replaced, with probability token_rate (at least one), by another train token
               that had the same tag, drawn by frequency; tags are unchanged

Every example gets ``augment.copies`` copies; copy k of an example applies one operation, taken in turn
from a per-example random order of the methods (so with copies >= methods each operation is used once per
round, as EDA splits its copies between operations). A copy equal to its original or to an earlier copy
of the same example is dropped (e.g. a sentence without entities under ``mention``). Copies follow all
the originals in the train list, labels copied from their original.

Sentence pairs: ``augment.pair_inputs="first"`` (default) edits only the first text; ``"both"`` applies
the copy's operation to each text independently.

Randomness: example i draws from ``numpy.random.default_rng([augment.seed, train.seed, i])``, so the
augmented set depends only on the data and those seeds (and not on other examples). It is drawn once per
run, not per epoch: every epoch (and a resumed run) sees the same rows, which keeps the step count and
exact resume intact.

Lexicon file (``augment.lexicon_file``; needed by ``insert`` and ``synonym``), UTF-8, one entry a line:

    big,large,huge          a group: every word is a synonym of every other (commas or tabs)
    film<TAB>movie          (tabs work as well; this is a group of two)
    happy<TAB>glad,content  head word, tab, comma-separated synonyms: synonyms of `happy` only

Blank lines and lines starting with ``#`` are skipped; words are matched case-insensitively and must be
single words (no spaces). A word in several lines gets the union of its synonyms. Mixing tabs and commas
other than ``word<TAB>syn1,syn2``, an empty word, a word with a space or a group of fewer than two
different words is a DataError naming the file and line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxft.config import AUGMENT_METHODS
from jaxft.data.errors import DataError
from jaxft.data.ner_readers import Sentence
from jaxft.data.readers import read_text
from jaxft.data.tags import convert_to_bio, normalize_scheme

log = logging.getLogger("jaxft.augment")

TEXT_METHODS = AUGMENT_METHODS["sequence-classification"]   # swap, delete, insert, synonym
NER_METHODS = AUGMENT_METHODS["token-classification"]       # mention, token
NEEDS_LEXICON = ("insert", "synonym")


# ---------------------------------------------------------------------------------------------- lexicon

@dataclasses.dataclass(frozen=True)
class Lexicon:
    synonyms: dict[str, tuple[str, ...]]   # lower-cased word -> its synonyms as written in the file
    words: tuple[str, ...]                 # every word of the file once, in file order (insert's fallback)

    def of(self, word: str) -> tuple[str, ...]:
        return self.synonyms.get(word.lower(), ())


def read_lexicon(path: str | os.PathLike) -> Lexicon:
    """Parse a synonym lexicon (format in the module docstring); DataError names file:line of a bad line."""
    text = read_text(path, "utf-8")
    synonyms: dict[str, list[str]] = {}
    words: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, rest = line.split("\t", 1) if "\t" in line else (None, None)
        if head is not None and "\t" not in rest and "," not in head and "," in rest:
            head = _lexicon_word(path, number, head)
            group = [head] + [_lexicon_word(path, number, w) for w in rest.split(",")]
            targets = [head]
        elif "\t" in line and "," in line:
            raise DataError(path, "mixes tabs and commas: separate a group with one of them, or write "
                                  "word<TAB>syn1,syn2", number)
        else:
            group = [_lexicon_word(path, number, w) for w in re.split(r"[\t,]", line)]
            targets = group
        if len({w.lower() for w in group}) < 2:
            raise DataError(path, f"a synonym entry needs at least two different words, got {line!r}", number)
        for word in group:
            words.setdefault(word.lower(), word)
        for target in targets:
            known = synonyms.setdefault(target.lower(), [])
            for word in group:
                if word.lower() != target.lower() and word not in known:
                    known.append(word)
    if not synonyms:
        raise DataError(path, "no synonym entries (only blank lines or # comments)")
    return Lexicon({k: tuple(v) for k, v in synonyms.items()}, tuple(words.values()))


def _lexicon_word(path, number: int, word: str) -> str:
    word = word.strip()
    if not word:
        raise DataError(path, "empty word (two separators in a row, or one at an end of the line)", number)
    if any(c.isspace() for c in word):
        raise DataError(path, f"{word!r} contains a space: lexicon entries are single words", number)
    return word


# ---------------------------------------------------------------------------------------------- EDA ops

def _count(rate: float, length: int) -> int:
    return max(1, int(rate * length))


def random_swap(words: Sequence[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Swap two random positions, max(1, int(rate * len)) times; fewer than two words: unchanged."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(_count(rate, len(out))):
        i, j = rng.choice(len(out), 2, replace=False)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: Sequence[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Drop each word with probability `rate`; at least one is dropped and at least one kept."""
    out = list(words)
    if len(out) < 2:
        return out
    keep = rng.random(len(out)) >= rate
    if keep.all():
        keep[rng.integers(len(out))] = False
    if not keep.any():
        keep[rng.integers(len(out))] = True
    return [w for w, k in zip(out, keep) if k]


def random_insertion(words: Sequence[str], rate: float, rng: np.random.Generator, lexicon: Lexicon) -> list[str]:
    """Insert max(1, int(rate * len)) words at random positions: a synonym of a random word of the text that
    has one, else a random lexicon word. An empty text stays empty."""
    out = list(words)
    if not out:
        return out
    for _ in range(_count(rate, len(words))):
        known = [i for i, w in enumerate(out) if lexicon.of(_core(w)[1])]
        if known:
            source = out[known[rng.integers(len(known))]]
            choices = lexicon.of(_core(source)[1])
            new = choices[rng.integers(len(choices))]
        else:
            new = lexicon.words[rng.integers(len(lexicon.words))]
        out.insert(int(rng.integers(len(out) + 1)), new)
    return out


def synonym_replacement(words: Sequence[str], rate: float, rng: np.random.Generator, lexicon: Lexicon) -> list[str]:
    """Replace max(1, int(rate * len)) distinct positions whose word the lexicon knows by a random synonym."""
    out = list(words)
    known = [i for i, w in enumerate(out) if lexicon.of(_core(w)[1])]
    if not known:
        return out
    for i in rng.choice(known, min(_count(rate, len(out)), len(known)), replace=False):
        before, core, after = _core(out[i])
        choices = lexicon.of(core)
        out[i] = before + _match_case(core, choices[rng.integers(len(choices))]) + after
    return out


_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def _core(word: str) -> tuple[str, str, str]:
    """("(", "Good", ").") for "(Good)." so that punctuation attached to a word does not hide it."""
    before, core, after = _CORE.match(word).groups()
    return (before, core, after) if core else ("", word, "")


def _match_case(original: str, replacement: str) -> str:
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


# ---------------------------------------------------------------------------------------------- NER ops

Span = tuple[int, int, str]   # [start, end) and entity type


def entity_spans(tags: Sequence[str], scheme: str = "BIO") -> list[Span]:
    """Entity mentions of a tag sequence in `scheme`, as read by the IOB2 conversion."""
    spans: list[Span] = []
    for i, tag in enumerate(convert_to_bio(tags, scheme)):
        if tag.startswith("B-"):
            spans.append((i, i + 1, tag[2:]))
        elif tag.startswith("I-"):
            start, _, entity_type = spans[-1]
            spans[-1] = (start, i + 1, entity_type)
    return spans


def tags_for_spans(length: int, spans: Sequence[Span], scheme: str = "BIO") -> list[str]:
    """The tag sequence of `length` tokens with these (sorted, disjoint) mentions, written in `scheme`."""
    scheme = normalize_scheme(scheme)
    tags = ["O"] * length
    previous_end, previous_type = -1, None
    for start, end, entity_type in spans:
        size = end - start
        if scheme == "BIO":
            prefixes = ["B"] + ["I"] * (size - 1)
        elif scheme == "IOB1":   # B- only for an entity right after another of its type
            first = "B" if previous_end == start and previous_type == entity_type else "I"
            prefixes = [first] + ["I"] * (size - 1)
        else:
            single, last = ("S", "E") if scheme == "IOBES" else ("U", "L")
            prefixes = [single] if size == 1 else ["B"] + ["I"] * (size - 2) + [last]
        for position, prefix in zip(range(start, end), prefixes):
            tags[position] = f"{prefix}-{entity_type}"
        previous_end, previous_type = end, entity_type
    return tags


def collect_mentions(sentences: Sequence[Sentence], scheme: str = "BIO") -> dict[str, list[tuple[str, ...]]]:
    """Distinct mentions per entity type (token tuples, in order of first appearance)."""
    mentions: dict[str, dict[tuple[str, ...], None]] = {}
    for sentence in sentences:
        if sentence.tags is None:
            continue
        for start, end, entity_type in entity_spans(sentence.tags, scheme):
            mentions.setdefault(entity_type, {})[tuple(sentence.tokens[start:end])] = None
    return {entity_type: list(found) for entity_type, found in mentions.items()}


@dataclasses.dataclass
class TokenPool:
    """The tokens seen with one tag, with counts, for frequency-weighted draws that skip one word."""
    words: list[str]
    counts: np.ndarray
    cumulative: np.ndarray
    index: dict[str, int]

    def draw_other(self, word: str, rng: np.random.Generator) -> str | None:
        own = self.index.get(word)
        skip = int(self.counts[own]) if own is not None else 0
        total = int(self.cumulative[-1]) - skip
        if total <= 0:
            return None
        x = int(rng.integers(total))
        if own is not None and x >= self.cumulative[own] - skip:
            x += skip
        return self.words[int(np.searchsorted(self.cumulative, x, side="right"))]


def collect_label_tokens(sentences: Sequence[Sentence]) -> dict[str, TokenPool]:
    """Per tag (as written), the tokens seen with it and how often."""
    counts: dict[str, dict[str, int]] = {}
    for sentence in sentences:
        if sentence.tags is None:
            continue
        for token, tag in zip(sentence.tokens, sentence.tags):
            by_token = counts.setdefault(tag, {})
            by_token[token] = by_token.get(token, 0) + 1
    pools = {}
    for tag, by_token in counts.items():
        n = np.array(list(by_token.values()), np.int64)
        pools[tag] = TokenPool(list(by_token), n, np.cumsum(n), {w: i for i, w in enumerate(by_token)})
    return pools


def mention_replacement(tokens: Sequence[str], tags: Sequence[str], rate: float, rng: np.random.Generator,
                        mentions: dict[str, list[tuple[str, ...]]], scheme: str = "BIO"
                        ) -> tuple[list[str], list[str]]:
    """Replace each mention with probability `rate` (at least one that has an alternative) by another
    mention of its type; the result is re-tagged in `scheme`."""
    spans = entity_spans(tags, scheme)
    candidates = [k for k, (s, e, t) in enumerate(spans)
                  if any(m != tuple(tokens[s:e]) for m in mentions.get(t, ()))]
    if not candidates:
        return list(tokens), list(tags)
    chosen = [k for k in candidates if rng.random() < rate] or [candidates[rng.integers(len(candidates))]]
    new_tokens: list[str] = []
    new_spans: list[Span] = []
    cursor = 0
    for k, (start, end, entity_type) in enumerate(spans):
        new_tokens.extend(tokens[cursor:start])
        mention = tuple(tokens[start:end])
        if k in chosen:
            others = [m for m in mentions[entity_type] if m != mention]
            mention = others[rng.integers(len(others))]
        new_spans.append((len(new_tokens), len(new_tokens) + len(mention), entity_type))
        new_tokens.extend(mention)
        cursor = end
    new_tokens.extend(tokens[cursor:])
    return new_tokens, tags_for_spans(len(new_tokens), new_spans, scheme)


def labelwise_token_replacement(tokens: Sequence[str], tags: Sequence[str], rate: float,
                                rng: np.random.Generator, pools: dict[str, TokenPool]
                                ) -> tuple[list[str], list[str]]:
    """Replace each token with probability `rate` (at least one that has an alternative) by another token
    seen with the same tag; tags are unchanged."""
    out = list(tokens)
    candidates = [i for i, (w, t) in enumerate(zip(tokens, tags))
                  if t in pools and len(pools[t].words) - (w in pools[t].index) > 0]
    if not candidates:
        return out, list(tags)
    chosen = [i for i in candidates if rng.random() < rate] or [candidates[rng.integers(len(candidates))]]
    for i in chosen:
        out[i] = pools[tags[i]].draw_other(tokens[i], rng)
    return out, list(tags)


# ---------------------------------------------------------------------------------------------- drivers

@dataclasses.dataclass(frozen=True)
class Settings:
    methods: tuple[str, ...]
    copies: int = 1
    rates: dict[str, float] = dataclasses.field(default_factory=dict)   # method -> rate
    pair_inputs: str = "first"
    seed: tuple[int, ...] = (0,)

    def rate(self, method: str) -> float:
        return self.rates.get(method, 0.1)


def parse_methods(spec: str | Sequence[str]) -> tuple[str, ...]:
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


def _copy_methods(settings: Settings, rng: np.random.Generator) -> list[str]:
    order = [settings.methods[k] for k in rng.permutation(len(settings.methods))]
    return [order[k % len(order)] for k in range(settings.copies)]


def augment_texts(examples: Sequence[Any], settings: Settings, lexicon: Lexicon | None = None) -> list[Any]:
    """Augmented copies of TextExample-like records (fields text, text_pair, label, source), in example
    order; each copy's source reads "<source> (augmented: <method>)"."""
    unknown = [m for m in settings.methods if m not in TEXT_METHODS]
    if unknown:
        raise ValueError(f"unknown classification augmentation {unknown[0]!r}; choices: {', '.join(TEXT_METHODS)}")
    if lexicon is None and any(m in NEEDS_LEXICON for m in settings.methods):
        raise ValueError("augmentation 'insert' and 'synonym' need a lexicon (augment.lexicon_file)")
    copies = []
    for index, example in enumerate(examples):
        rng = np.random.default_rng([*settings.seed, index])
        seen = {(example.text, example.text_pair)}
        for method in _copy_methods(settings, rng):
            text = _edit_text(example.text, method, settings.rate(method), rng, lexicon)
            pair = example.text_pair
            if pair is not None and settings.pair_inputs == "both":
                pair = _edit_text(pair, method, settings.rate(method), rng, lexicon)
            if (text, pair) in seen:
                continue
            seen.add((text, pair))
            copies.append(dataclasses.replace(example, text=text, text_pair=pair,
                                              source=f"{example.source} (augmented: {method})"))
    return copies


def _edit_text(text: str, method: str, rate: float, rng: np.random.Generator, lexicon: Lexicon | None) -> str:
    words = text.split()
    if method == "swap":
        words = random_swap(words, rate, rng)
    elif method == "delete":
        words = random_deletion(words, rate, rng)
    elif method == "insert":
        words = random_insertion(words, rate, rng, lexicon)
    else:
        words = synonym_replacement(words, rate, rng, lexicon)
    return " ".join(words) if words != text.split() else text


def augment_sentences(sentences: Sequence[Sentence], settings: Settings, scheme: str = "BIO") -> list[Sentence]:
    """Augmented copies of labelled NER sentences (tags in `scheme`), in sentence order; mentions and
    label-wise tokens are collected from `sentences` themselves."""
    unknown = [m for m in settings.methods if m not in NER_METHODS]
    if unknown:
        raise ValueError(f"unknown NER augmentation {unknown[0]!r}; choices: {', '.join(NER_METHODS)}")
    mentions = collect_mentions(sentences, scheme) if "mention" in settings.methods else {}
    pools = collect_label_tokens(sentences) if "token" in settings.methods else {}
    copies = []
    for index, sentence in enumerate(sentences):
        if sentence.tags is None:
            continue
        rng = np.random.default_rng([*settings.seed, index])
        seen = {(tuple(sentence.tokens), tuple(sentence.tags))}
        for method in _copy_methods(settings, rng):
            if method == "mention":
                tokens, tags = mention_replacement(sentence.tokens, sentence.tags, settings.rate(method), rng,
                                                   mentions, scheme)
            else:
                tokens, tags = labelwise_token_replacement(sentence.tokens, sentence.tags, settings.rate(method),
                                                           rng, pools)
            key = (tuple(tokens), tuple(tags))
            if key in seen:
                continue
            seen.add(key)
            copies.append(Sentence(tokens, tags, f"{sentence.source} (augmented: {method})"))
    return copies


def settings_from_config(config) -> Settings:
    aug = config.augment
    rates = {m: float(aug[f"{m}_rate"]) for m in TEXT_METHODS + NER_METHODS}
    return Settings(parse_methods(aug.methods), aug.copies, rates, aug.pair_inputs,
                    (int(aug.seed), int(config.train.seed) % 2**32))


def augment_train(train: list, config) -> list:
    """The task hook: `train` plus its augmented copies when config.augment.methods is set, else `train`
    itself. Call it on the train split only, before tokenisation. NER sentences are expected in IOB2 (as
    the NER reader converts them)."""
    settings = settings_from_config(config)
    if not settings.methods or not train:
        return train
    if config.task == "token-classification":
        copies = augment_sentences(train, settings, "BIO")
    else:
        path = config.augment.lexicon_file
        lexicon = read_lexicon(os.path.expanduser(path)) if path else None
        copies = augment_texts(train, settings, lexicon)
    by_method = {m: sum(c.source.endswith(f"(augmented: {m})") for c in copies) for m in settings.methods}
    log.info("augment: %d train examples + %d augmented copies (%s; %d copies each asked); dev and test "
             "are not augmented", len(train), len(copies), ", ".join(f"{m} {n}" for m, n in by_method.items()),
             settings.copies)
    return list(train) + copies
