"""Word-to-sub-token alignment for token classification with a Hugging Face fast tokenizer.

Words go to the tokenizer already split (``is_split_into_words=True``); ``word_ids()`` maps every
sub-token back to its word. A word is predicted from its first sub-token.

Some words tokenize to no sub-token at all (zero-width characters, control characters, whitespace):
in training they get no label and are counted in the TruncationReport; for prediction the tokenizer's
unknown token stands in for such a word, so that every word gets a prediction.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jaxft.data.batching import IGNORE_INDEX
from jaxft.data.errors import DataError
from jaxft.data.ner_readers import Sentence

NO_WORD = -1  # word id of special tokens and padding


@dataclass(eq=False)  # compared by identity: numpy fields make == ambiguous
class Encoded:
    input_ids: np.ndarray  # int32 [L]
    labels: np.ndarray  # int32 [L], IGNORE_INDEX where ignored
    word_ids: np.ndarray  # int32 [L], word index in the sentence, NO_WORD for special tokens
    sentence_index: int
    first_word: int  # first word that this window covers (0 unless a sentence was split into windows)


@dataclass
class TruncationReport:
    sentences: int = 0
    truncated_sentences: int = 0  # sentences with more sub-tokens than max_length allows
    dropped_words: int = 0  # labelled words whose first sub-token was cut off: not trained on
    empty_words: int = 0  # words that tokenize to no sub-token: not trained on


def prepare_tokenizer(tokenizer):
    """A copy of a fast tokenizer with no implicit padding or truncation.

    A tokenizer.json may carry a fixed padding and truncation (the packaged MiniLM one pads and truncates
    to 128); the encoders here pass ``padding=False, truncation=False`` on every call anyway, but a
    prepared copy is safe to hand to other code too.
    """
    _require_fast(tokenizer)
    prepared = copy.deepcopy(tokenizer)
    prepared.backend_tokenizer.no_padding()
    prepared.backend_tokenizer.no_truncation()
    return prepared


@dataclass
class _Tokenized:
    prefix: list[int]  # special tokens before the words, e.g. [CLS]
    body_ids: np.ndarray  # the words' sub-tokens
    body_words: np.ndarray  # word index of each body sub-token, non-decreasing
    suffix: list[int]  # special tokens after the words, e.g. [SEP]


def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            "a fast (Rust-backed) tokenizer is needed for word_ids(); "
            "load it with transformers.AutoTokenizer.from_pretrained(folder)"
        )


def _tokenize(tokenizer, sentences_tokens: Sequence[Sequence[str]]) -> list[_Tokenized]:
    _require_fast(tokenizer)
    if not sentences_tokens:
        return []
    encoding = tokenizer(
        [list(tokens) for tokens in sentences_tokens],
        is_split_into_words=True,
        add_special_tokens=True,
        padding=False,
        truncation=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # no "longer than the maximum length" warning: truncation happens here
    )
    return [_split_specials(ids, encoding.word_ids(index)) for index, ids in enumerate(encoding["input_ids"])]


def _split_specials(ids: list[int], word_ids: list[int | None]) -> _Tokenized:
    start, end = 0, len(ids)
    while start < end and word_ids[start] is None:
        start += 1
    while end > start and word_ids[end - 1] is None:
        end -= 1
    words = np.array([NO_WORD if w is None else w for w in word_ids[start:end]], dtype=np.int32)
    return _Tokenized(list(ids[:start]), np.asarray(ids[start:end], dtype=np.int32), words, list(ids[end:]))


def _first_subtoken_mask(words: np.ndarray) -> np.ndarray:
    previous = np.concatenate([[NO_WORD], words[:-1]])
    return (words != NO_WORD) & (words != previous)


def _body_budget(tokenized: _Tokenized, max_length: int) -> int:
    budget = max_length - len(tokenized.prefix) - len(tokenized.suffix)
    if budget < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for words next to "
            f"{len(tokenized.prefix) + len(tokenized.suffix)} special tokens"
        )
    return budget


def _assemble(tokenized: _Tokenized, body_ids, body_words, body_labels, sentence_index, first_word) -> Encoded:
    n_prefix, n_suffix = len(tokenized.prefix), len(tokenized.suffix)
    return Encoded(
        input_ids=np.concatenate([tokenized.prefix, body_ids, tokenized.suffix]).astype(np.int32),
        labels=np.concatenate(
            [np.full(n_prefix, IGNORE_INDEX), body_labels, np.full(n_suffix, IGNORE_INDEX)]
        ).astype(np.int32),
        word_ids=np.concatenate([np.full(n_prefix, NO_WORD), body_words, np.full(n_suffix, NO_WORD)]).astype(
            np.int32
        ),
        sentence_index=sentence_index,
        first_word=first_word,
    )


# ---------------------------------------------------------------- training


def encode_for_training(
    tokenizer,
    sentences: Sequence[Sentence],
    label2id: Mapping[str, int],
    max_length: int,
    label_all_subtokens: bool = False,
) -> tuple[list[Encoded], TruncationReport]:
    """Encode labelled sentences, one sequence each, truncated to ``max_length`` sub-tokens.

    A word's label goes on its first sub-token; its other sub-tokens get IGNORE_INDEX, or with
    ``label_all_subtokens`` the word's label with B- turned into I-. Special tokens get IGNORE_INDEX.
    """
    inside = _inside_label_ids(label2id) if label_all_subtokens else None
    report = TruncationReport(sentences=len(sentences))
    encoded = []
    for index, (sentence, tokenized) in enumerate(zip(sentences, _tokenize(tokenizer, [s.tokens for s in sentences]))):
        tag_ids = _tag_ids(sentence, label2id)
        words = tokenized.body_words
        first = _first_subtoken_mask(words)
        word_label = tag_ids[np.maximum(words, 0)]  # clipped index: NO_WORD positions are masked below
        if inside is None:
            labels = np.where(first, word_label, IGNORE_INDEX)
        else:
            labels = np.where(first, word_label, np.where(words != NO_WORD, inside[word_label], IGNORE_INDEX))
        words_with_subtokens = int(first.sum())
        report.empty_words += len(sentence.tokens) - words_with_subtokens
        budget = _body_budget(tokenized, max_length)
        body_ids = tokenized.body_ids
        if len(words) > budget:
            report.truncated_sentences += 1
            report.dropped_words += words_with_subtokens - int(first[:budget].sum())
            body_ids, words, labels = body_ids[:budget], words[:budget], labels[:budget]
        encoded.append(_assemble(tokenized, body_ids, words, labels, index, first_word=0))
    return encoded, report


def _tag_ids(sentence: Sentence, label2id: Mapping[str, int]) -> np.ndarray:
    if sentence.tags is None:
        raise DataError(sentence.source, "sentence has no tags; training needs labelled sentences")
    if len(sentence.tags) != len(sentence.tokens):
        raise DataError(sentence.source, f"{len(sentence.tokens)} tokens but {len(sentence.tags)} tags")
    try:
        return np.array([label2id[tag] for tag in sentence.tags], dtype=np.int32)
    except KeyError as error:
        raise DataError(
            sentence.source, f"tag {error.args[0]!r} is not in the label list ({', '.join(label2id)})"
        ) from None


def _inside_label_ids(label2id: Mapping[str, int]) -> np.ndarray:
    """Map each label id to the id used on a word's later sub-tokens: B-x -> I-x, others unchanged."""
    inside = np.arange(max(label2id.values()) + 1, dtype=np.int32)
    for label, label_id in label2id.items():
        if label.startswith("B-"):
            inside_label = "I-" + label[2:]
            if inside_label not in label2id:
                raise ValueError(f"label_all_subtokens needs {inside_label!r} in label2id (for {label!r})")
            inside[label_id] = label2id[inside_label]
    return inside


# ---------------------------------------------------------------- prediction


def encode_for_prediction(
    tokenizer,
    sentences_tokens: Sequence[Sequence[str]],
    max_length: int,
    overlap_words: int | None = None,
) -> list[Encoded]:
    """Encode sentences for prediction without losing any word.

    A sentence longer than ``max_length`` is split into windows of whole words; consecutive windows share
    ``overlap_words`` words (default: half the previous window) so that words near a cut also appear with
    context (``gather_word_predictions`` picks the window with the most). A single word longer than a
    window is cut to its first sub-tokens. A word with no sub-token is encoded as the tokenizer's unknown
    token. Labels are all IGNORE_INDEX.
    """
    if overlap_words is not None and overlap_words < 0:
        raise ValueError(f"overlap_words must be >= 0, got {overlap_words}")
    tokenized = _tokenize_every_word(tokenizer, sentences_tokens)
    encoded = []
    for index, (tokens, sentence) in enumerate(zip(sentences_tokens, tokenized)):
        budget = _body_budget(sentence, max_length)
        if len(tokens) == 0:
            encoded.append(_assemble(sentence, [], [], [], index, first_word=0))
            continue
        word_range = np.arange(len(tokens))
        starts = np.searchsorted(sentence.body_words, word_range, side="left")
        ends = np.searchsorted(sentence.body_words, word_range, side="right")
        for first_word, end_word in _plan_windows(starts, ends, budget, overlap_words):
            lo, hi = starts[first_word], min(ends[end_word - 1], starts[first_word] + budget)
            body_ids, body_words = sentence.body_ids[lo:hi], sentence.body_words[lo:hi]
            labels = np.full(hi - lo, IGNORE_INDEX)
            encoded.append(_assemble(sentence, body_ids, body_words, labels, index, first_word))
    return encoded


def _tokenize_every_word(tokenizer, sentences_tokens: Sequence[Sequence[str]]) -> list[_Tokenized]:
    """Tokenize, then re-tokenize sentences with sub-token-less words where the unk token stands in."""
    tokenized = _tokenize(tokenizer, sentences_tokens)
    lacking = [i for i, tokens in enumerate(sentences_tokens) if _words_covered(tokenized[i]) < len(tokens)]
    if not lacking:
        return tokenized
    unk = tokenizer.unk_token
    if unk is None:
        raise ValueError("some words tokenize to no sub-token and the tokenizer has no unk token to stand in")
    substituted = []
    for i in lacking:
        present = np.zeros(len(sentences_tokens[i]), dtype=bool)
        present[tokenized[i].body_words[tokenized[i].body_words != NO_WORD]] = True
        substituted.append([word if ok else unk for word, ok in zip(sentences_tokens[i], present)])
    for i, retokenized in zip(lacking, _tokenize(tokenizer, substituted)):
        if _words_covered(retokenized) < len(sentences_tokens[i]):
            raise ValueError(f"sentence {i}: the unk token {unk!r} tokenizes to no sub-token")
        tokenized[i] = retokenized
    return tokenized


def _words_covered(tokenized: _Tokenized) -> int:
    return int(_first_subtoken_mask(tokenized.body_words).sum())


def _plan_windows(
    starts: np.ndarray, ends: np.ndarray, budget: int, overlap_words: int | None
) -> list[tuple[int, int]]:
    """Word ranges [first, end) of the windows; each holds whole words that fit in ``budget`` sub-tokens
    (or one word, cut). The next window starts at most at ``end``, so that no word is skipped, and early
    enough to share ``overlap_words`` words, but late enough to reach word ``end``: every window adds
    at least one new word."""
    n_words = len(starts)
    windows = []
    first = 0
    while True:
        end = first + 1
        while end < n_words and ends[end] - starts[first] <= budget:
            end += 1
        windows.append((first, end))
        if end >= n_words:
            return windows
        overlap = (end - first) // 2 if overlap_words is None else overlap_words
        first = max(first + 1, end - overlap)
        while first < end and ends[end] - starts[first] > budget:  # the next window must reach word `end`
            first += 1


def gather_word_predictions(
    encoded: Sequence[Encoded],
    token_scores: Sequence[np.ndarray],
    num_words_per_sentence: Sequence[int],
) -> list[np.ndarray]:
    """Per-word scores [num_words, num_labels] for each sentence, from per-window token scores [L, num_labels].

    A word is scored at its first sub-token. A word in several windows is taken from the window where it
    lies farthest from a cut (a window edge inside the sentence), i.e. with the most context; ties go to
    the earlier window. Score arrays may be longer than their window (padding). Raises ValueError when a
    word has no sub-token in any window.
    """
    if len(encoded) != len(token_scores):
        raise ValueError(f"{len(encoded)} encoded windows but {len(token_scores)} score arrays")
    num_labels = np.asarray(token_scores[0]).shape[-1] if len(token_scores) else 0
    dtype = np.asarray(token_scores[0]).dtype if len(token_scores) else np.float32
    gathered = [np.zeros((n, num_labels), dtype=dtype) for n in num_words_per_sentence]
    best_distance = [np.full(n, -1, dtype=np.int64) for n in num_words_per_sentence]
    for window, scores in zip(encoded, token_scores):
        scores = np.asarray(scores)
        if scores.ndim != 2 or scores.shape[0] < len(window.word_ids) or scores.shape[1] != num_labels:
            raise ValueError(
                f"scores of shape {scores.shape} do not fit a window of {len(window.word_ids)} tokens "
                f"and {num_labels} labels"
            )
        positions = np.flatnonzero(_first_subtoken_mask(window.word_ids))
        if len(positions) == 0:
            continue
        words = window.word_ids[positions].astype(np.int64)
        n_words = num_words_per_sentence[window.sentence_index]
        distance = _distance_to_cut(words, window.first_word, int(words.max()), n_words)
        better = distance > best_distance[window.sentence_index][words]
        gathered[window.sentence_index][words[better]] = scores[positions[better]]
        best_distance[window.sentence_index][words[better]] = distance[better]
    for sentence_index, distances in enumerate(best_distance):
        missing = np.flatnonzero(distances < 0)
        if len(missing):
            raise ValueError(
                f"sentence {sentence_index}: words {missing[:10].tolist()} have no sub-token in any window "
                "(encode with encode_for_prediction, which keeps every word)"
            )
    return gathered


def _distance_to_cut(words: np.ndarray, first_word: int, last_word: int, n_words: int) -> np.ndarray:
    no_cut = n_words + 1  # farther than any real distance
    left = words - first_word if first_word > 0 else np.full_like(words, no_cut)
    right = last_word - words if last_word < n_words - 1 else np.full_like(words, no_cut)
    return np.minimum(left, right)
