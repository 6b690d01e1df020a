import time

import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxft.data.errors import DataError
from jaxft.data.ner_readers import Sentence, read_conll
from jaxft.data.readers import packaged_minilm_path, packaged_tweets_ner_path
from jaxft.data.tags import bio_label_list, entity_types
from jaxft.data.ner_encoding import (
    IGNORE_INDEX,
    Encoded,
    encode_for_prediction,
    encode_for_training,
    gather_word_predictions,
    prepare_tokenizer,
)

LABELS = bio_label_list(["LOC", "X"])  # O, B-LOC, I-LOC, B-X, I-X
L2I = {label: i for i, label in enumerate(LABELS)}
O, B_LOC, I_LOC, B_X, I_X = range(5)
IGN = IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(packaged_minilm_path())


class CountingTokenizer:
    """Delegates to a tokenizer and counts how often it is called on text."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def pieces(tokenizer, encoded):
    return tokenizer.convert_ids_to_tokens(encoded.input_ids.tolist())


def sentence(tokens, tags):
    return Sentence(tokens, tags, "mem:1")


def test_prepare_tokenizer_removes_packaged_padding():
    fresh = AutoTokenizer.from_pretrained(packaged_minilm_path())
    assert fresh.backend_tokenizer.padding["length"] == 128
    assert fresh.backend_tokenizer.truncation["max_length"] == 128
    prepared = prepare_tokenizer(fresh)
    assert prepared.backend_tokenizer.padding is None
    assert prepared.backend_tokenizer.truncation is None
    assert fresh.backend_tokenizer.padding["length"] == 128  # the original is left alone
    assert len(prepared.backend_tokenizer.encode("hello world").ids) == 4


def test_unprepared_tokenizer_is_not_padded(tokenizer):
    fresh = AutoTokenizer.from_pretrained(packaged_minilm_path())
    encoded, _ = encode_for_training(fresh, [sentence(["hello"], ["O"])], L2I, max_length=512)
    assert len(encoded[0].input_ids) == 3


def test_first_subtoken_gets_the_label(tokenizer):
    encoded, report = encode_for_training(
        tokenizer, [sentence(["Tokenization", "in", "Washington"], ["B-X", "O", "B-LOC"])], L2I, max_length=32
    )
    (e,) = encoded
    assert pieces(tokenizer, e) == ["[CLS]", "token", "##ization", "in", "washington", "[SEP]"]
    assert e.input_ids.tolist() == [101, 19204, 3989, 1999, 2899, 102]
    assert e.labels.tolist() == [IGN, B_X, IGN, O, B_LOC, IGN]
    assert e.word_ids.tolist() == [-1, 0, 0, 1, 2, -1]
    assert (e.input_ids.dtype, e.labels.dtype, e.word_ids.dtype) == (np.int32, np.int32, np.int32)
    assert (e.sentence_index, e.first_word) == (0, 0)
    assert (report.truncated_sentences, report.windowed_sentences, report.windows, report.empty_words) == (0, 0, 0, 0)


def test_label_all_subtokens_turns_b_into_i(tokenizer):
    s = sentence(["unbelievably", "Tokenization", "Tokenization", "in"], ["B-X", "I-X", "B-LOC", "O"])
    (e,), _ = encode_for_training(tokenizer, [s], L2I, max_length=32, label_all_subtokens=True)
    assert pieces(tokenizer, e)[1:6] == ["un", "##bel", "##ie", "##va", "##bly"]
    assert e.labels.tolist() == [IGN, B_X, I_X, I_X, I_X, I_X, I_X, I_X, B_LOC, I_LOC, O, IGN]
    assert e.word_ids.tolist() == [-1, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, -1]


def test_label_all_subtokens_needs_inside_labels(tokenizer):
    with pytest.raises(ValueError, match="needs 'I-X' in label2id"):
        encode_for_training(tokenizer, [sentence(["a"], ["B-X"])], {"O": 0, "B-X": 1}, 8, label_all_subtokens=True)


def test_unicode_words(tokenizer):
    s = sentence(["Café", "😀", "東京", "naïve", "Zürich"], ["B-LOC", "O", "B-LOC", "O", "B-LOC"])
    (e,), report = encode_for_training(tokenizer, [s], L2I, max_length=32)
    assert pieces(tokenizer, e) == ["[CLS]", "cafe", "[UNK]", "東", "京", "naive", "zurich", "[SEP]"]
    assert e.word_ids.tolist() == [-1, 0, 1, 2, 2, 3, 4, -1]
    assert e.labels.tolist() == [IGN, B_LOC, O, B_LOC, IGN, O, B_LOC, IGN]
    assert report.empty_words == 0


def test_zero_width_words_get_no_label_in_training(tokenizer):
    s = sentence(["a", "\u200b", "b", "\u00ad", "c", "\x07"], ["O", "B-X", "B-LOC", "I-LOC", "O", "O"])
    (e,), report = encode_for_training(tokenizer, [s], L2I, max_length=32)
    assert pieces(tokenizer, e) == ["[CLS]", "a", "b", "c", "[SEP]"]
    assert e.word_ids.tolist() == [-1, 0, 2, 4, -1]
    assert e.labels.tolist() == [IGN, O, B_LOC, O, IGN]
    assert report.empty_words == 3


def test_zero_width_words_become_unk_for_prediction(tokenizer):
    words = ["a", "\u200b", "b", "", "c"]
    (e,) = encode_for_prediction(tokenizer, [words], max_length=32)
    assert pieces(tokenizer, e) == ["[CLS]", "a", "[UNK]", "b", "[UNK]", "c", "[SEP]"]
    assert e.word_ids.tolist() == [-1, 0, 1, 2, 3, 4, -1]
    assert (e.labels == IGN).all()
    scores = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    (per_word,) = gather_word_predictions([e], [scores], [5])
    assert per_word.tolist() == scores[1:6].tolist()


def test_long_sentences_become_training_windows(tokenizer):
    sentences = [
        sentence(["Tokenization", "a", "b", "c"], ["B-X", "O", "O", "B-LOC"]),  # 5 sub-tokens for 4 places
        sentence(["a", "b"], ["O", "O"]),
        sentence(["a", "b", "c", "Tokenization"], ["O", "O", "O", "B-X"]),
        sentence(["unbelievably", "b"], ["B-X", "O"]),  # one word of 5 sub-tokens: cut to 4, its label kept
    ]
    encoded, report = encode_for_training(tokenizer, sentences, L2I, max_length=6)
    rows = [(e.sentence_index, e.first_word, pieces(tokenizer, e)[1:-1], e.labels[1:-1].tolist()) for e in encoded]
    assert rows == [
        (0, 0, ["token", "##ization", "a", "b"], [B_X, IGN, O, O]),  # b: no farther from a cut in the next window
        (0, 2, ["b", "c"], [IGN, B_LOC]),                             # b is context here, c is trained
        (1, 0, ["a", "b"], [O, O]),
        (2, 0, ["a", "b", "c"], [O, O, O]),
        (2, 2, ["c", "token", "##ization"], [IGN, B_X, IGN]),
        (3, 0, ["un", "##bel", "##ie", "##va"], [B_X, IGN, IGN, IGN]),
        (3, 1, ["b"], [O]),
    ]
    assert (report.sentences, report.windowed_sentences, report.windows, report.truncated_sentences) == (4, 3, 6, 1)
    # every word is trained exactly once
    for index, s in enumerate(sentences):
        trained = [int(w) for e in encoded if e.sentence_index == index
                   for w, label in zip(e.word_ids, e.labels) if label != IGN]
        assert trained == list(range(len(s.tokens)))
    with pytest.raises(ValueError, match="max_length=2 leaves no room"):
        encode_for_training(tokenizer, sentences, L2I, max_length=2)


def test_training_errors_name_the_sentence(tokenizer):
    with pytest.raises(DataError, match=r"mem:1: tag 'B-PER' is not in the label list"):
        encode_for_training(tokenizer, [sentence(["a"], ["B-PER"])], L2I, 8)
    with pytest.raises(DataError, match=r"mem:1: sentence has no tags"):
        encode_for_training(tokenizer, [sentence(["a"], None)], L2I, 8)


def test_training_encoding_is_batched_and_fast(tokenizer):
    sentences = read_conll(packaged_tweets_ner_path())
    labels = bio_label_list(entity_types(t for s in sentences for t in s.tags))
    counting = CountingTokenizer(tokenizer)
    start = time.perf_counter()
    encoded, report = encode_for_training(counting, sentences, {l: i for i, l in enumerate(labels)}, 128)
    elapsed = time.perf_counter() - start
    assert counting.calls == 1
    assert len(encoded) == 2394 and report.truncated_sentences == 0 and report.empty_words == 0
    assert sum(int((e.labels != IGN).sum()) for e in encoded) == 46469
    assert elapsed < 3.0, f"encoding 2,394 sentences took {elapsed:.2f} s"


# ---------------------------------------------------------------- prediction windows


def long_sentence():
    cycle = ["the", "Tokenization", "東京", "\u200b", "unbelievably", "a", "Washington"]
    words = [cycle[i % len(cycle)] for i in range(600)]
    words[300] = "東" * 70  # one word longer than a whole window
    return words


def subtoken_counts(tokenizer, words):
    counts = []
    for word in words:
        n = len(tokenizer(word, add_special_tokens=False, padding=False, truncation=False)["input_ids"])
        counts.append(max(n, 1))  # a word without sub-tokens is encoded as [UNK]
    return counts


def test_prediction_windows_cover_every_word(tokenizer):
    words = long_sentence()
    counts = subtoken_counts(tokenizer, words)
    windows = encode_for_prediction(tokenizer, [words], max_length=64)
    assert 15 < len(windows) < 80
    seen_first = set()
    for window in windows:
        ids = window.input_ids.tolist()
        assert len(ids) <= 64 and ids[0] == 101 and ids[-1] == 102
        body = window.word_ids[1:-1]
        assert (body >= 0).all() and (np.diff(body) >= 0).all()
        assert window.first_word == body[0]
        present, n_tokens = np.unique(body, return_counts=True)
        assert present.tolist() == list(range(body[0], body[-1] + 1))
        if len(present) == 1 and counts[present[0]] > 62:
            assert present[0] == 300 and n_tokens[0] == 62  # the over-long word, cut to the window
        else:
            assert n_tokens.tolist() == [counts[w] for w in present]  # whole words only
        seen_first.update(present.tolist())
    assert seen_first == set(range(600))
    starts = [w.first_word for w in windows]
    ends = [int(w.word_ids[-2]) + 1 for w in windows]
    assert starts == sorted(starts) and starts[0] == 0 and ends[-1] == 600
    long_word_window = starts.index(300)
    assert ends[long_word_window] == 301
    for k in range(len(windows) - 1):
        if long_word_window not in (k, k + 1):
            assert starts[k + 1] < ends[k]  # consecutive windows share words
    assert starts[long_word_window + 1] == 301 and ends[long_word_window - 1] == 300
    assert all(end > previous for previous, end in zip(ends, ends[1:]))  # each window adds words
    unk_positions = [i for i, w in enumerate(words) if w == "\u200b"]
    for window in windows:
        for position, word in enumerate(window.word_ids):
            if word in unk_positions:
                assert window.input_ids[position] == tokenizer.unk_token_id


def test_prediction_without_overlap(tokenizer):
    words = long_sentence()
    windows = encode_for_prediction(tokenizer, [words], max_length=64, overlap_words=0)
    covered = [int(w) for window in windows for w in np.unique(window.word_ids[1:-1])]
    assert covered == list(range(600))  # each word in exactly one window, in order


def synthetic_scores(windows, pad_to=None):
    """Row p of window k: [word id at p, k, p] so that the gathered rows show where they came from."""
    scores = []
    for k, window in enumerate(windows):
        length = pad_to or len(window.input_ids)
        rows = np.full((length, 3), -7.0, dtype=np.float32)
        n = len(window.input_ids)
        rows[:n, 0] = window.word_ids
        rows[:n, 1] = k
        rows[:n, 2] = np.arange(n)
        scores.append(rows)
    return scores


def expected_choice(windows, n_words):
    """For each word: the window where it lies farthest from a cut, ties to the earlier one."""
    best = {}
    for k, window in enumerate(windows):
        words = window.word_ids[window.word_ids >= 0]
        first, last = int(words.min()), int(words.max())
        for word in np.unique(words):
            left = word - first if first > 0 else np.inf
            right = last - word if last < n_words - 1 else np.inf
            distance = min(left, right)
            if word not in best or distance > best[word][0]:
                best[word] = (distance, k)
    return [best[w][1] for w in range(n_words)]


def test_gather_one_row_per_word_from_the_best_window(tokenizer):
    short = ["Tokenization", "in", "Washington"]
    words = long_sentence()
    empty = []
    windows = encode_for_prediction(tokenizer, [short, words, empty, ["x"]], max_length=64)
    assert [w.sentence_index for w in windows[:1]] == [0] and windows[-1].sentence_index == 3
    gathered = gather_word_predictions(windows, synthetic_scores(windows, pad_to=64), [3, 600, 0, 1])
    assert [g.shape for g in gathered] == [(3, 3), (600, 3), (0, 3), (1, 3)]
    assert gathered[0][:, 0].tolist() == [0, 1, 2] and gathered[0][:, 2].tolist() == [1, 3, 4]
    long_rows = gathered[1]
    assert long_rows[:, 0].tolist() == list(range(600))
    long_windows = [w for w in windows if w.sentence_index == 1]
    offset = windows.index(long_windows[0])
    assert (long_rows[:, 1] - offset).astype(int).tolist() == expected_choice(long_windows, 600)
    for word, (_, k, position) in enumerate(long_rows.astype(int)):
        window = windows[k]
        assert window.word_ids[position] == word and window.word_ids[position - 1] != word  # first sub-token


def test_gather_prefers_the_window_with_more_context():
    # Six words, two windows: words 0-3 and words 2-5 (one sub-token each).
    first = Encoded(np.arange(6, dtype=np.int32), np.full(6, IGN), np.array([-1, 0, 1, 2, 3, -1]), 0, 0)
    second = Encoded(np.arange(6, dtype=np.int32), np.full(6, IGN), np.array([-1, 2, 3, 4, 5, -1]), 0, 2)
    scores = [np.full((6, 1), 1.0), np.full((6, 1), 2.0)]
    (rows,) = gather_word_predictions([first, second], scores, [6])
    # Word 2 is 1 word from the first window's cut and 0 from the second's; word 3 the other way round.
    assert rows[:, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]


def test_gather_errors(tokenizer):
    truncated = [Encoded(np.arange(4, dtype=np.int32), np.full(4, IGN), np.array([-1, 0, 1, -1]), 0, 0)]
    with pytest.raises(ValueError, match=r"sentence 0: words \[2\] have no sub-token in any window"):
        gather_word_predictions(truncated, [np.zeros((4, 5))], [3])
    with pytest.raises(ValueError, match="1 encoded windows but 0 score arrays"):
        gather_word_predictions(truncated, [], [3])
    with pytest.raises(ValueError, match=r"scores of shape \(3, 5\) do not fit a window of 4 tokens"):
        gather_word_predictions(truncated, [np.zeros((3, 5))], [3])
