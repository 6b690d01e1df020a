"""Word-to-sub-token alignment for token classification with a Hugging Face fast tokenizer.

Two ways in:
- word lists (training data, CoNLL input): the words go to the tokenizer already split
  (``is_split_into_words=True``);
- raw text (``encode_texts_for_prediction``): the tokenizer's own normalizer and pre-tokenizer find the words,
  as the Hugging Face token-classification pipeline does (punctuation is a word of its own), with character
  offsets into the text.
Either way ``word_ids()`` maps every sub-token back to its word. A word is trained and tagged at its first
sub-token; for prediction its sub-tokens' scores may also be aggregated (``gather_word_predictions``).

A row holds at most max_length sub-tokens. A longer sentence is split into windows of whole words that
overlap (half a window by default): for prediction every word is read from the window where it lies farthest
from a cut; for training each word is trained in exactly that window and is context in the others. With
document context (``context_tokens``, FLERT), a sentence that fits in one row is fed with up to that many
sub-tokens (whole words) of the neighbouring sentences of its document on each side; those tokens have no
word id and no label: context only.

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

NO_WORD = -1  # word id of special tokens, context tokens and padding
AGGREGATIONS = ("first", "average", "max")  # how prediction turns sub-token scores into word scores

# Per-token flags of a row's CRF chain (chain_flags): the words whose tags the chain links, and whether the
# chain continues beyond the row (a window of a longer sentence), where no start/end potential applies.
CHAIN_WORD, OPEN_BEFORE, OPEN_AFTER = 1, 2, 4


@dataclass(eq=False)  # compared by identity: numpy fields make == ambiguous
class Encoded:
    input_ids: np.ndarray  # int32 [L]
    labels: np.ndarray  # int32 [L], IGNORE_INDEX where ignored
    word_ids: np.ndarray  # int32 [L], word index in the sentence, NO_WORD for special tokens
    sentence_index: int
    first_word: int  # first word that this window covers (0 unless a sentence was split into windows)
    num_words: int = 0  # words of the whole sentence (a window may hold fewer)
    cut_before: bool = False  # a window that starts after the sentence's first word
    cut_after: bool = False  # a window that ends before the sentence's last word


@dataclass
class TruncationReport:
    sentences: int = 0
    windowed_sentences: int = 0  # longer than max_length: split into overlapping windows, each word trained once
    windows: int = 0  # training rows those sentences became
    truncated_sentences: int = 0  # with a word longer than a whole window: that word's last sub-tokens are cut
    empty_words: int = 0  # words that tokenize to no sub-token: not trained on
    context_sentences: int = 0  # fed with document context (context_tokens > 0)


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


def _tokenize_texts(tokenizer, texts: Sequence[str]) -> tuple[list[_Tokenized], list[list[tuple[int, int]]]]:
    """Raw texts -> (tokenized, character spans of each word): the words are the pre-tokenizer's (after the
    normalizer), numbered 0, 1, ... in order; a word spans its first sub-token's start to its last one's end."""
    _require_fast(tokenizer)
    if not texts:
        return [], []
    encoding = tokenizer(list(texts), add_special_tokens=True, padding=False, truncation=False,
                         return_offsets_mapping=True, return_attention_mask=False, return_token_type_ids=False,
                         verbose=False)
    tokenized, spans = [], []
    for index, ids in enumerate(encoding["input_ids"]):
        raw_words = encoding.word_ids(index)
        offsets = encoding["offset_mapping"][index]
        numbering: dict[int, int] = {}
        word_spans: list[list[int]] = []
        word_ids: list[int | None] = []
        for word, (start, end) in zip(raw_words, offsets):
            if word is None:
                word_ids.append(None)
                continue
            if word not in numbering:
                numbering[word] = len(word_spans)
                word_spans.append([start, end])
            number = numbering[word]
            word_spans[number][0] = min(word_spans[number][0], start)
            word_spans[number][1] = max(word_spans[number][1], end)
            word_ids.append(number)
        tokenized.append(_split_specials(ids, word_ids))
        spans.append([(int(a), int(b)) for a, b in word_spans])
    return tokenized, spans


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


def _assemble(tokenized: _Tokenized, body_ids, body_words, body_labels, sentence_index, first_word,
              num_words: int, left=(), right=(), end_word: int | None = None) -> Encoded:
    """prefix + left context + body + right context + suffix; specials and context get no word and no label."""
    before, after = len(tokenized.prefix) + len(left), len(right) + len(tokenized.suffix)
    return Encoded(
        input_ids=np.concatenate([tokenized.prefix, left, body_ids, right, tokenized.suffix]).astype(np.int32),
        labels=np.concatenate(
            [np.full(before, IGNORE_INDEX), body_labels, np.full(after, IGNORE_INDEX)]
        ).astype(np.int32),
        word_ids=np.concatenate([np.full(before, NO_WORD), body_words, np.full(after, NO_WORD)]).astype(np.int32),
        sentence_index=sentence_index,
        first_word=first_word,
        num_words=num_words,
        cut_before=first_word > 0,
        cut_after=end_word is not None and end_word < num_words,
    )


def _word_bounds(tokenized: _Tokenized, num_words: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of each word's sub-tokens in the body; start == end for a word without any."""
    word_range = np.arange(num_words)
    return (np.searchsorted(tokenized.body_words, word_range, side="left"),
            np.searchsorted(tokenized.body_words, word_range, side="right"))


# ---------------------------------------------------------------- document context


def _context(tokenized: Sequence[_Tokenized], documents: Sequence | None, index: int, room: int,
             context_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) context sub-token ids for sentence `index`: whole words of the neighbouring sentences of
    its document, nearest first, at most `context_tokens` on each side and `room` in all."""
    empty = np.zeros(0, np.int32)
    if context_tokens <= 0 or documents is None or documents[index] is None or room <= 0:
        return empty, empty
    left_words = _neighbour_words(tokenized, documents, index, -1, context_tokens)
    right_words = _neighbour_words(tokenized, documents, index, +1, context_tokens)
    left_cap = min(context_tokens, room // 2)
    left = _take_words(left_words, left_cap)
    right = _take_words(right_words, min(context_tokens, room - sum(map(len, left))))
    left = _take_words(left_words, min(context_tokens, room - sum(map(len, right))))
    join = lambda words: np.concatenate(words).astype(np.int32) if words else empty  # noqa: E731
    return join(left[::-1]), join(right)


def _neighbour_words(tokenized, documents, index: int, step: int, limit: int) -> list[np.ndarray]:
    """Sub-token ids of the words next to sentence `index` in its document, going outwards (`step` -1: to the
    left, nearest first), until `limit` sub-tokens are collected."""
    words, total = [], 0
    other = index + step
    while 0 <= other < len(tokenized) and documents[other] == documents[index] and total < limit:
        neighbour = tokenized[other]
        starts, ends = _word_bounds(neighbour, int(neighbour.body_words.max()) + 1 if len(neighbour.body_words)
                                    else 0)
        pieces = [neighbour.body_ids[a:b] for a, b in zip(starts, ends) if b > a]
        for piece in (reversed(pieces) if step < 0 else pieces):
            words.append(piece)
            total += len(piece)
            if total >= limit:
                break
        other += step
    return words


def _take_words(words: list[np.ndarray], budget: int) -> list[np.ndarray]:
    taken, total = [], 0
    for piece in words:
        if total + len(piece) > budget:
            break
        taken.append(piece)
        total += len(piece)
    return taken


# ---------------------------------------------------------------- training


def encode_for_training(
    tokenizer,
    sentences: Sequence[Sentence],
    label2id: Mapping[str, int],
    max_length: int,
    label_all_subtokens: bool = False,
    *,
    context_tokens: int = 0,
    overlap_words: int | None = None,
) -> tuple[list[Encoded], TruncationReport]:
    """Encode labelled sentences: one row each, or overlapping windows for a sentence longer than
    ``max_length`` sub-tokens (windows as for prediction; each word is labelled in the one window that
    ``gather_word_predictions`` would read it from, and is context in the others).

    A word's label goes on its first sub-token; its other sub-tokens get IGNORE_INDEX, or with
    ``label_all_subtokens`` the word's label with B- turned into I-. Special tokens get IGNORE_INDEX.
    ``context_tokens`` > 0: sentences that fit get document context (``Sentence.document``; none without it).
    """
    inside = _inside_label_ids(label2id) if label_all_subtokens else None
    report = TruncationReport(sentences=len(sentences))
    tokenized = _tokenize(tokenizer, [s.tokens for s in sentences])
    documents = [s.document for s in sentences]
    encoded = []
    for index, (sentence, sentence_tokens) in enumerate(zip(sentences, tokenized)):
        tag_ids = _tag_ids(sentence, label2id)
        words = sentence_tokens.body_words
        first = _first_subtoken_mask(words)
        word_label = tag_ids[np.maximum(words, 0)]  # clipped index: NO_WORD positions are masked below
        if inside is None:
            labels = np.where(first, word_label, IGNORE_INDEX)
        else:
            labels = np.where(first, word_label, np.where(words != NO_WORD, inside[word_label], IGNORE_INDEX))
        report.empty_words += len(sentence.tokens) - int(first.sum())
        budget = _body_budget(sentence_tokens, max_length)
        num_words = len(sentence.tokens)
        if len(words) <= budget:
            left, right = _context(tokenized, documents, index, budget - len(words), context_tokens)
            report.context_sentences += bool(len(left) or len(right))
            encoded.append(_assemble(sentence_tokens, sentence_tokens.body_ids, words, labels, index, 0, num_words,
                                     left, right))
            continue
        windows = _training_windows(sentence_tokens, labels, index, num_words, budget, overlap_words)
        report.windowed_sentences += 1
        report.windows += len(windows)
        report.truncated_sentences += _has_cut_word(sentence_tokens, num_words, budget)
        encoded.extend(windows)
    return encoded, report


def _training_windows(tokenized: _Tokenized, labels: np.ndarray, index: int, num_words: int, budget: int,
                      overlap_words: int | None) -> list[Encoded]:
    starts, ends = _word_bounds(tokenized, num_words)
    plan = _plan_windows(starts, ends, budget, overlap_words)
    owner = _window_owners(plan, starts, ends, num_words)
    rows = []
    for k, (first_word, end_word) in enumerate(plan):
        lo, hi = starts[first_word], min(ends[end_word - 1], starts[first_word] + budget)
        words = tokenized.body_words[lo:hi]
        trained = (words != NO_WORD) & (owner[np.maximum(words, 0)] == k)
        rows.append(_assemble(tokenized, tokenized.body_ids[lo:hi], words,
                              np.where(trained, labels[lo:hi], IGNORE_INDEX), index, first_word, num_words,
                              end_word=end_word))
    return rows


def _window_owners(plan: list[tuple[int, int]], starts: np.ndarray, ends: np.ndarray, num_words: int) -> np.ndarray:
    """The window each word is read from (gather_word_predictions' rule): farthest from a cut, ties earlier."""
    owner = np.full(num_words, -1, np.int64)
    best = np.full(num_words, -1, np.int64)
    for k, (first_word, end_word) in enumerate(plan):
        words = np.arange(first_word, end_word)
        words = words[ends[words] > starts[words]]  # words with a sub-token
        if not len(words):
            continue
        distance = _distance_to_cut(words, first_word, int(words.max()), num_words)
        better = distance > best[words]
        owner[words[better]], best[words[better]] = k, distance[better]
    return owner


def _has_cut_word(tokenized: _Tokenized, num_words: int, budget: int) -> bool:
    starts, ends = _word_bounds(tokenized, num_words)
    return bool(((ends - starts) > budget).any())


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
    *,
    documents: Sequence | None = None,
    context_tokens: int = 0,
    contexts: Sequence[tuple[Sequence[str], Sequence[str]]] | None = None,
) -> list[Encoded]:
    """Encode sentences (word lists) for prediction without losing any word.

    A sentence longer than ``max_length`` is split into windows of whole words; consecutive windows share
    ``overlap_words`` words (default: half the previous window) so that words near a cut also appear with
    context (``gather_word_predictions`` picks the window with the most). A single word longer than a
    window is cut to its first sub-tokens. A word with no sub-token is encoded as the tokenizer's unknown
    token. Labels are all IGNORE_INDEX.

    Document context (``context_tokens`` > 0) comes from the neighbouring sentences of the list with the same
    ``documents`` id (one per sentence, None for none), as in training, or from ``contexts``: the (left words,
    right words) around each sentence, nearest words at the sentence.
    """
    if overlap_words is not None and overlap_words < 0:
        raise ValueError(f"overlap_words must be >= 0, got {overlap_words}")
    for name, values in (("document ids", documents), ("contexts", contexts)):
        if values is not None and len(values) != len(sentences_tokens):
            raise ValueError(f"{len(sentences_tokens)} sentences but {len(values)} {name}")
    if contexts is None:
        tokenized = _tokenize_every_word(tokenizer, sentences_tokens)
        return [window for index, tokens in enumerate(sentences_tokens)
                for window in _prediction_windows(tokenized, index, len(tokens), max_length, overlap_words,
                                                  documents, context_tokens)]
    n = len(sentences_tokens)
    tokenized = _tokenize_every_word(tokenizer, [*sentences_tokens, *(left for left, _ in contexts),
                                                 *(right for _, right in contexts)])
    encoded = []
    for index, tokens in enumerate(sentences_tokens):  # each sentence a document of three: left, itself, right
        triple = [tokenized[n + index], tokenized[index], tokenized[2 * n + index]]
        encoded.extend(_prediction_windows(triple, 1, len(tokens), max_length, overlap_words, (0, 0, 0),
                                           context_tokens, sentence_index=index))
    return encoded


def encode_texts_for_prediction(
    tokenizer, texts: Sequence[str], max_length: int, overlap_words: int | None = None
) -> tuple[list[Encoded], list[list[tuple[int, int]]]]:
    """Encode raw texts for prediction as the Hugging Face pipeline reads them: the tokenizer runs on the text
    itself and its pre-tokenizer's words (punctuation split off) are the words. Returns the windows (as
    ``encode_for_prediction``) and each text's word spans (start, end) in characters."""
    if overlap_words is not None and overlap_words < 0:
        raise ValueError(f"overlap_words must be >= 0, got {overlap_words}")
    tokenized, spans = _tokenize_texts(tokenizer, texts)
    encoded = []
    for index, word_spans in enumerate(spans):
        encoded.extend(_prediction_windows(tokenized, index, len(word_spans), max_length, overlap_words, None, 0))
    return encoded, spans


def _prediction_windows(tokenized: Sequence[_Tokenized], index: int, num_words: int, max_length: int,
                        overlap_words: int | None, documents, context_tokens: int,
                        sentence_index: int | None = None) -> list[Encoded]:
    """The windows of sentence `index` of `tokenized` (numbered `sentence_index`, default `index`)."""
    sentence = tokenized[index]
    index_in_output = index if sentence_index is None else sentence_index
    budget = _body_budget(sentence, max_length)
    if num_words == 0:
        return [_assemble(sentence, [], [], [], index_in_output, 0, 0)]
    if len(sentence.body_ids) <= budget:
        left, right = _context(tokenized, documents, index, budget - len(sentence.body_ids), context_tokens)
        return [_assemble(sentence, sentence.body_ids, sentence.body_words,
                          np.full(len(sentence.body_ids), IGNORE_INDEX), index_in_output, 0, num_words, left,
                          right)]
    starts, ends = _word_bounds(sentence, num_words)
    windows = []
    for first_word, end_word in _plan_windows(starts, ends, budget, overlap_words):
        lo, hi = starts[first_word], min(ends[end_word - 1], starts[first_word] + budget)
        body_ids, body_words = sentence.body_ids[lo:hi], sentence.body_words[lo:hi]
        windows.append(_assemble(sentence, body_ids, body_words, np.full(hi - lo, IGNORE_INDEX), index_in_output,
                                 first_word, num_words, end_word=end_word))
    return windows


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
    aggregation: str = "first",
) -> list[np.ndarray]:
    """Per-word scores [num_words, num_labels] for each sentence, from per-window token scores [L, num_labels].

    A word in several windows is taken from the window where it lies farthest from a cut (a window edge
    inside the sentence), i.e. with the most context; ties go to the earlier window. Within that window the
    word's sub-tokens give its scores by ``aggregation`` (the Hugging Face pipeline's strategies, for scores
    that are log-probabilities): "first" its first sub-token's (how training labels words), "average" the log
    of its sub-tokens' mean probabilities, "max" the scores of the sub-token with the highest probability (the
    first such). Score arrays may be longer than their window (padding). Raises ValueError when a word has no
    sub-token in any window.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {aggregation!r}")
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
        word_scores = _word_scores(window.word_ids, scores, positions, aggregation)
        gathered[window.sentence_index][words[better]] = word_scores[better]
        best_distance[window.sentence_index][words[better]] = distance[better]
    for sentence_index, distances in enumerate(best_distance):
        missing = np.flatnonzero(distances < 0)
        if len(missing):
            raise ValueError(
                f"sentence {sentence_index}: words {missing[:10].tolist()} have no sub-token in any window "
                "(encode with encode_for_prediction, which keeps every word)"
            )
    return gathered


def _word_scores(word_ids: np.ndarray, scores: np.ndarray, first_positions: np.ndarray, aggregation: str) -> np.ndarray:
    """One score row per word of a window (words in order of their first sub-token)."""
    if aggregation == "first":
        return scores[first_positions]
    # a word's sub-tokens are consecutive: it runs from its first sub-token to the next word's or a non-word
    positions = np.flatnonzero(word_ids != NO_WORD)
    in_word = scores[positions].astype(np.float64)
    group_starts = np.searchsorted(positions, first_positions)
    counts = np.diff(np.append(group_starts, len(positions)))
    if aggregation == "average":
        mean = np.add.reduceat(np.exp(in_word), group_starts, axis=0) / counts[:, None]
        with np.errstate(divide="ignore"):
            return np.log(mean).astype(scores.dtype)
    peak = in_word.max(-1)
    best_peak = np.repeat(np.maximum.reduceat(peak, group_starts), counts)
    index = np.where(peak == best_peak, np.arange(len(positions)), len(positions))
    return scores[positions[np.minimum.reduceat(index, group_starts)]]


def chain_flags(encoded: Encoded, trained_only: bool) -> np.ndarray:
    """int32 [L]: CHAIN_WORD at the first sub-token of each word of the row's CRF chain (the labelled words
    with `trained_only`, for training rows; else every word of the row), plus OPEN_BEFORE / OPEN_AFTER on the
    chain's first / last word when the chain does not start / end its sentence (the row is a window cut
    inside the sentence, or words of the sentence in the row lie before / after the chain)."""
    words = _first_subtoken_mask(encoded.word_ids)
    chain = words & (encoded.labels != IGNORE_INDEX) if trained_only else words
    flags = np.zeros(len(encoded.word_ids), np.int32)
    positions = np.flatnonzero(chain)
    if not len(positions):
        return flags
    flags[positions] = CHAIN_WORD
    all_words = np.flatnonzero(words)
    if encoded.cut_before or all_words[0] < positions[0]:
        flags[positions[0]] |= OPEN_BEFORE
    if encoded.cut_after or all_words[-1] > positions[-1]:
        flags[positions[-1]] |= OPEN_AFTER
    return flags


def _distance_to_cut(words: np.ndarray, first_word: int, last_word: int, n_words: int) -> np.ndarray:
    no_cut = n_words + 1  # farther than any real distance
    left = words - first_word if first_word > 0 else np.full_like(words, no_cut)
    right = last_word - words if last_word < n_words - 1 else np.full_like(words, no_cut)
    return np.minimum(left, right)
