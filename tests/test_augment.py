"""Train-split augmentation (jaxft/data/augment.py): each operation on hand-made sentences, the lexicon
format and its errors, seeding, valid tags after mention replacement, config validation, and the task
hooks (train grows, dev and test are untouched)."""

import dataclasses
from collections import Counter

import numpy as np
import pytest

from conftest import recipe_config
from jaxft.config import ConfigError, base_config, validate
from jaxft.data import augment as A
from jaxft.data.errors import DataError
from jaxft.data.ner_readers import Sentence, read_conll, sentences_to_bio
from jaxft.data.tags import convert_to_bio_counted
from jaxft.data.text_readers import TextExample

WORDS = "the quick brown fox jumps over a lazy dog today".split()


@pytest.fixture
def lexicon(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text("# synonyms\n"
                    "good,great,fine\n"
                    "\n"
                    "film\tmovie\n"
                    "bad\tawful,poor\n"
                    "great,superb\n", encoding="utf-8")
    return A.read_lexicon(path)


def rngs(n=20):
    return [np.random.default_rng(seed) for seed in range(n)]


# ---------------------------------------------------------------------------------------------- EDA ops

def test_swap_keeps_the_multiset_and_changes_the_order():
    for rng in rngs():
        out = A.random_swap(WORDS, 0.1, rng)                      # max(1, int(0.1 * 10)) = 1 swap
        assert Counter(out) == Counter(WORDS)
        assert sum(a != b for a, b in zip(out, WORDS)) == 2      # exactly one swap of distinct words
    for rng in rngs():
        out = A.random_swap(WORDS, 0.5, rng)                      # 5 swaps
        assert Counter(out) == Counter(WORDS) and len(out) == 10
    assert A.random_swap(["alone"], 0.5, np.random.default_rng(0)) == ["alone"]
    assert A.random_swap([], 0.5, np.random.default_rng(0)) == []


def test_deletion_never_returns_empty_and_keeps_the_order():
    for rng in rngs():
        out = A.random_deletion(WORDS, 1.0, rng)                  # everything drawn: one word is kept
        assert len(out) == 1 and out[0] in WORDS
        out = A.random_deletion(WORDS, 1e-9, rng)                 # nothing drawn: one word is dropped
        assert len(out) == 9
        assert [w for w in WORDS if w in out] == out              # a subsequence of the original
        out = A.random_deletion(WORDS, 0.5, rng)
        assert 1 <= len(out) <= 9 and [w for w in WORDS if w in out] == out
    assert A.random_deletion(["alone"], 1.0, np.random.default_rng(0)) == ["alone"]
    assert A.random_deletion(["two", "words"], 1.0, np.random.default_rng(0)) in (["two"], ["words"])


def test_synonym_replacement_uses_only_lexicon_words(lexicon):
    words = "A Good film , not a bad. one".split()
    for rng in rngs():
        out = A.synonym_replacement(words, 1.0, rng, lexicon)     # every known word replaced
        assert len(out) == len(words)
        assert out[0] == "A" and out[2] != "film" and out[5:] == ["a", out[6], "one"]
        assert out[1] in ("Great", "Fine", "Superb")              # capitalisation follows the original
        assert out[2] == "movie"
        assert out[6] in ("awful.", "poor.")                      # punctuation kept around the word
        out = A.synonym_replacement(words, 0.1, rng, lexicon)     # max(1, int(0.8)) = 1 word
        changed = [i for i, (a, b) in enumerate(zip(out, words)) if a != b]
        assert len(changed) == 1 and changed[0] in (1, 2, 6)
        before = words[changed[0]].strip(".").lower()
        assert out[changed[0]].strip(".").lower() in lexicon.of(before)
    assert A.synonym_replacement(["nothing", "known"], 1.0, np.random.default_rng(0), lexicon) == ["nothing", "known"]


def test_insertion_adds_synonyms_of_the_sentence_or_lexicon_words(lexicon):
    words = ["a", "bad", "day"]
    for rng in rngs():
        out = A.random_insertion(words, 0.1, rng, lexicon)        # one insertion
        assert len(out) == 4
        added = list((Counter(out) - Counter(words)).elements())
        assert len(added) == 1 and added[0] in ("awful", "poor")  # synonyms of "bad" only
        assert [w for w in out if w in words] == words            # the original words keep their order
    for rng in rngs():
        out = A.random_insertion(["nothing", "known"], 1.0, rng, lexicon)  # two insertions from the lexicon
        added = list((Counter(out) - Counter(["nothing", "known"])).elements())
        assert len(added) == 2 and set(added) <= set(lexicon.words)
    assert lexicon.words == ("good", "great", "fine", "film", "movie", "bad", "awful", "poor", "superb")


# ---------------------------------------------------------------------------------------------- lexicon

def test_lexicon_groups_head_words_and_unions(lexicon):
    assert lexicon.of("good") == ("great", "fine")
    assert lexicon.of("GREAT") == ("good", "fine", "superb")      # two lines, case-insensitive
    assert lexicon.of("superb") == ("great",)
    assert lexicon.of("film") == ("movie",) and lexicon.of("movie") == ("film",)   # word<TAB>syn: a group
    assert lexicon.of("bad") == ("awful", "poor")
    assert lexicon.of("awful") == ()                              # head-word lines go one way
    assert lexicon.of("unknown") == ()


@pytest.mark.parametrize("lines, line, message", [
    (["good,great", "bad,,poor"], 2, "empty word"),
    (["good,great,"], 1, "empty word"),
    (["# c", "good\tgreat\tfine,nice"], 2, "mixes tabs and commas"),
    (["a,b\tc"], 1, "mixes tabs and commas"),
    (["good,great", "", "lonely"], 3, "at least two different words"),
    (["Good,good"], 1, "at least two different words"),
    (["very good,great"], 1, "contains a space"),
])
def test_lexicon_errors_name_file_and_line(tmp_path, lines, line, message):
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as error:
        A.read_lexicon(path)
    assert str(error.value).startswith(f"{path}:{line}: ")


def test_lexicon_without_entries_or_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no synonym entries"):
        A.read_lexicon(path)
    with pytest.raises(DataError, match="file not found"):
        A.read_lexicon(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------- NER ops

MENTIONS = {"PER": [("John", "Smith"), ("Ann",)], "LOC": [("Paris",), ("New", "York", "City")]}


@pytest.mark.parametrize("scheme, tags, expected", [
    ("BIO", ["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O"]),
    ("IOBES", ["B-PER", "E-PER", "O", "S-LOC", "O"], ["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "O"]),
    ("BILOU", ["B-PER", "L-PER", "O", "U-LOC", "O"], ["U-PER", "O", "B-LOC", "I-LOC", "L-LOC", "O"]),
    ("IOB1", ["I-PER", "I-PER", "O", "I-LOC", "O"], ["I-PER", "O", "I-LOC", "I-LOC", "I-LOC", "O"]),
])
def test_mention_replacement_retags_for_the_new_length(scheme, tags, expected):
    tokens = ["John", "Smith", "visited", "Paris", "today"]
    out_tokens, out_tags = A.mention_replacement(tokens, tags, 1.0, np.random.default_rng(0), MENTIONS, scheme)
    assert out_tokens == ["Ann", "visited", "New", "York", "City", "today"]   # one alternative each
    assert out_tags == expected


def test_iob1_adjacent_mentions_keep_their_boundary():
    tokens, tags = ["Paris", "London", "rocks"], ["I-LOC", "B-LOC", "O"]       # two LOC mentions
    mentions = {"LOC": [("Paris",), ("London",), ("New", "York")]}
    for rng in rngs():
        out_tokens, out_tags = A.mention_replacement(tokens, tags, 1.0, rng, mentions, "IOB1")
        spans = A.entity_spans(out_tags, "IOB1")
        assert len(spans) == 2 and len(out_tags) == len(out_tokens)
        assert out_tags[spans[1][0]] == "B-LOC" and out_tags[0] == "I-LOC"
        assert A.tags_for_spans(len(out_tags), spans, "IOB1") == out_tags


def _valid(tags, scheme):
    """Canonical in its scheme: no repaired continuation and written back unchanged from its spans."""
    return (convert_to_bio_counted(tags, scheme).repaired == 0
            and A.tags_for_spans(len(tags), A.entity_spans(tags, scheme), scheme) == list(tags))


@pytest.mark.parametrize("scheme", ["BIO", "IOBES"])
def test_mention_replacement_on_real_data_gives_valid_sequences(small_ner_file, scheme):
    bio = sentences_to_bio(read_conll(small_ner_file)).sentences
    sentences = [Sentence(s.tokens, A.tags_for_spans(len(s.tags), A.entity_spans(s.tags), scheme), s.source)
                 for s in bio]
    mentions = A.collect_mentions(sentences, scheme)
    settings = A.Settings(("mention",), copies=3, rates={"mention": 0.5}, seed=(1,))
    copies = A.augment_sentences(sentences, settings, scheme)
    with_alternatives = [s for s in sentences if any(
        any(m != tuple(s.tokens[a:b]) for m in mentions[t]) for a, b, t in A.entity_spans(s.tags, scheme))]
    assert len(with_alternatives) == 80 and len(copies) == 225    # 3 copies each, less 15 duplicates
    known = {t: set(found) for t, found in mentions.items()}
    for copy in copies:
        assert len(copy.tokens) == len(copy.tags) and _valid(copy.tags, scheme)
        for start, end, entity_type in A.entity_spans(copy.tags, scheme):
            assert tuple(copy.tokens[start:end]) in known[entity_type]
        original = next(s for s in sentences if copy.source == f"{s.source} (augmented: mention)")
        assert [t for _, _, t in A.entity_spans(copy.tags, scheme)] == \
               [t for _, _, t in A.entity_spans(original.tags, scheme)]   # same types in the same order


def test_token_replacement_keeps_tags_and_draws_same_tag_tokens():
    train = [Sentence(["Ann", "saw", "Bob"], ["B-PER", "O", "B-PER"], "a:1"),
             Sentence(["Cid", "met", "Ann"], ["B-PER", "O", "B-PER"], "a:5"),
             Sentence(["only"], ["B-ORG"], "a:9")]
    pools = A.collect_label_tokens(train)
    by_tag = {"B-PER": {"Ann", "Bob", "Cid"}, "O": {"saw", "met"}}
    for rng in rngs():
        tokens, tags = A.labelwise_token_replacement(train[0].tokens, train[0].tags, 1.0, rng, pools)
        assert tags == train[0].tags
        assert all(new != old and new in by_tag[tag] for new, old, tag in zip(tokens, train[0].tokens, tags))
        tokens, _ = A.labelwise_token_replacement(train[0].tokens, train[0].tags, 1e-9, rng, pools)
        assert sum(a != b for a, b in zip(tokens, train[0].tokens)) == 1   # at least one replaced
    # a tag seen with one word only has no alternative
    assert A.labelwise_token_replacement(["only"], ["B-ORG"], 1.0, np.random.default_rng(0), pools) == \
        (["only"], ["B-ORG"])


def test_token_pool_draws_by_frequency_and_never_the_same_word():
    pool = A.collect_label_tokens([Sentence(["a", "a", "a", "b", "c"], ["O"] * 5, "x")])["O"]
    rng = np.random.default_rng(0)
    draws = Counter(pool.draw_other("c", rng) for _ in range(4000))
    assert set(draws) == {"a", "b"} and 0.72 < draws["a"] / 4000 < 0.78   # 3 : 1
    assert set(pool.draw_other("a", rng) for _ in range(200)) == {"b", "c"}


# ---------------------------------------------------------------------------------------------- seeding

def _texts():
    return [TextExample(" ".join(np.roll(WORDS, i)) + " good film", None, i % 2, f"t.csv:{i + 2}")
            for i in range(12)]


def test_same_seed_same_set_other_seed_other_set(lexicon, small_ner_file):
    settings = A.Settings(("swap", "delete", "insert", "synonym"), copies=2, seed=(0, 0))
    first = A.augment_texts(_texts(), settings, lexicon)
    assert first == A.augment_texts(_texts(), settings, lexicon)
    assert len(first) == 24
    other = A.augment_texts(_texts(), dataclasses.replace(settings, seed=(1, 0)), lexicon)
    assert [e.text for e in other] != [e.text for e in first]
    assert [e.label for e in first] == [i % 2 for i in range(12) for _ in range(2)]   # labels copied

    sentences = sentences_to_bio(read_conll(small_ner_file)).sentences
    ner = A.Settings(("mention", "token"), copies=2, rates={"mention": 0.3, "token": 0.1}, seed=(0, 0))
    first = A.augment_sentences(sentences, ner)
    assert first == A.augment_sentences(sentences, ner)
    assert [s.tokens for s in first] != [s.tokens for s in A.augment_sentences(sentences, dataclasses.replace(
        ner, seed=(0, 1)))]
    # an example's copies depend on its own index and the seeds only, not on the examples before it
    assert A.augment_texts(_texts()[:5], settings, lexicon) == A.augment_texts(_texts(), settings, lexicon)[:10]


def test_pairs_first_or_both():
    examples = [TextExample("one two three four", "five six seven eight", "yes", "p.csv:2")]
    first = A.augment_texts(examples, A.Settings(("swap",), seed=(3,)))
    assert first[0].text_pair == "five six seven eight" and first[0].text != examples[0].text
    both = A.augment_texts(examples, A.Settings(("swap",), pair_inputs="both", seed=(3,)))
    assert both[0].text == first[0].text and both[0].text_pair != "five six seven eight"
    assert sorted(both[0].text_pair.split()) == sorted("five six seven eight".split())


def test_unchanged_copies_are_dropped_and_methods_take_turns():
    examples = [TextExample("same same", None, 0, "s:1"), TextExample("a b c d e f", None, 1, "s:2")]
    copies = A.augment_texts(examples, A.Settings(("swap", "delete"), copies=4, seed=(0,)))
    # "same same": swapping gives the same text; deleting gives "same" once. "a b ...": 2 swaps, 2 deletes
    assert [c.source for c in copies].count("s:1 (augmented: delete)") == 1
    assert [c.text for c in copies if c.source.startswith("s:1")] == ["same"]
    assert sorted(c.source for c in copies if c.source.startswith("s:2")) == \
        ["s:2 (augmented: delete)"] * 2 + ["s:2 (augmented: swap)"] * 2


# ---------------------------------------------------------------------------------------------- config

def test_config_validation(tmp_path):
    config = base_config()
    validate(config)                                              # off by default
    assert config.augment.methods == ""
    assert A.augment_train(["x"], config) == ["x"]
    for value, message in [("mention,shuffle", "unknown 'shuffle'; choices for token-classification: mention, token"),
                           ("swap", "not for task 'token-classification': 'swap'")]:
        config.augment.methods = value
        with pytest.raises(ConfigError, match=message):
            validate(config)
    config.task = "sequence-classification"
    config.data.train_file = ""
    config.augment.methods = "swap, synonym"
    with pytest.raises(ConfigError, match="synonym need a synonym lexicon: set augment.lexicon_file"):
        validate(config)
    config.augment.lexicon_file = str(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="augment.lexicon_file': file not found"):
        validate(config)
    (tmp_path / "lex.txt").write_text("a,b\n")
    config.augment.lexicon_file = str(tmp_path / "lex.txt")
    validate(config)
    config.augment.swap_rate = 0.0
    with pytest.raises(ConfigError, match="augment.swap_rate' must be in"):
        validate(config)
    config.augment.swap_rate = 0.1
    config.augment.copies = 0
    with pytest.raises(ConfigError, match="augment.copies' must be > 0"):
        validate(config)
    config.augment.copies = 1
    config.augment.pair_inputs = "second"
    with pytest.raises(ConfigError, match="augment.pair_inputs' must be one of first, both"):
        validate(config)
    config.augment.pair_inputs = "first"
    config.task = "question-answering"
    config.qa.doc_stride = 64
    with pytest.raises(ConfigError, match="no augmentation for this task"):
        validate(config)


# ---------------------------------------------------------------------------------------------- task hooks

def _prepared_task(module, config):
    """The task's data prepared and tokenised as a training run prepares them (its spec's prepare, then
    build with the model the run loads); no step is compiled."""
    import jaxft.models as jm
    from jaxft.tasks.base import resolve_model_path

    validate(config)
    spec = module.SPEC
    data = spec.prepare(config)
    path = resolve_model_path(config.model.name_or_path)
    model = jm.from_pretrained(path, task=spec.name, **spec.model_options(config, data))
    return spec.build(config, jm.load_tokenizer(path), model, data)


def test_classification_hook_augments_train_only(tmp_path, tiny_bert, lexicon):
    from jaxft.tasks import classification

    path = tmp_path / "reviews.csv"
    rows = [f"{' '.join(np.roll(WORDS, i))} number{i},{'pos' if i % 3 else 'neg'}" for i in range(40)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    plain = classification.read_splits(recipe_config("sentiment", tiny_bert, path).data)
    assert (len(plain.train), len(plain.dev), len(plain.test)) == (28, 6, 6)

    config = recipe_config("sentiment", tiny_bert, path, **{"augment.methods": "swap,delete", "augment.copies": 2})
    task = _prepared_task(classification, config)
    train = task.splits["train"]
    assert len(train) == 28 * 3 and train[:28] == plain.train      # every copy differs from its original
    assert task.splits["dev"] == plain.dev and task.splits["test"] == plain.test
    assert len(task.rows["train"]) == 84 and len(task.rows["dev"]) == 6 and len(task.rows["test"]) == 6
    assert Counter(e.source.rsplit(": ", 1)[1] for e in train[28:]) == {"swap)": 28, "delete)": 28}
    assert [e.label for e in train[28:]] == [e.label for e in plain.train for _ in range(2)]
    assert train[28:] == A.augment_texts(plain.train, A.settings_from_config(config))


def test_ner_hook_augments_train_only(tiny_bert, small_ner_file):
    from jaxft.tasks import ner

    plain = ner.read_splits(recipe_config("ner", tiny_bert, small_ner_file).data)
    assert (len(plain.train), len(plain.dev), len(plain.test)) == (140, 30, 30)
    config = recipe_config("ner", tiny_bert, small_ner_file, **{
        "augment.methods": "mention,token", "augment.copies": 2, "data.max_length": 64})
    task = _prepared_task(ner, config)
    train = task.splits["train"]
    copies = A.augment_sentences(plain.train, A.settings_from_config(config))
    assert train == plain.train + copies and len(copies) == 198
    # every sentence gets its token copy; mention copies only where a mention has another of its type
    assert Counter(s.source.rsplit(": ", 1)[1] for s in copies) == {"token)": 140, "mention)": 58}
    assert task.splits["dev"] == plain.dev and task.splits["test"] == plain.test
    assert len(task.train_rows) == 140 + 198                     # tokenised after augmentation
    assert all(_valid(s.tags, "BIO") and len(s.tags) == len(s.tokens) for s in copies)
    assert set(task.labels) == set(ner.label_list(plain))         # no new labels
