import random

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from jaxft.data.tags import (
    bio_label_list,
    convert_to_bio,
    convert_to_bio_counted,
    detect_scheme,
    entity_types,
    parse_tag,
)


def test_parse_tag_splits_on_first_dash():
    assert parse_tag("B-geo-loc") == ("B", "geo-loc")
    assert parse_tag("I-PER") == ("I", "PER")
    assert parse_tag("U-a-b-c") == ("U", "a-b-c")
    assert parse_tag("O") == ("O", None)


@pytest.mark.parametrize("tag", ["X-PER", "B-", "PER", "", "B_PER", "b-PER", "BI-PER", "-PER", "o"])
def test_parse_tag_rejects_invalid_tags(tag):
    with pytest.raises(ValueError, match="invalid tag " + repr(tag).replace("-", r"\-")):
        parse_tag(tag)


def test_bio_valid_sequence_is_unchanged():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-geo-loc"]
    result = convert_to_bio_counted(tags, "BIO")
    assert result.tags == tags
    assert result.repaired == 0


def test_bio_repairs_orphan_inside_tags_like_seqeval():
    tags = ["I-PER", "I-PER", "O", "B-LOC", "I-PER", "I-LOC", "B-ORG", "I-ORG"]
    result = convert_to_bio_counted(tags, "BIO")
    assert result.tags == ["B-PER", "I-PER", "O", "B-LOC", "B-PER", "B-LOC", "B-ORG", "I-ORG"]
    assert result.repaired == 3
    assert get_entities(result.tags) == get_entities(tags)
    assert get_entities(result.tags) == [("PER", 0, 1), ("LOC", 3, 3), ("PER", 4, 4), ("LOC", 5, 5), ("ORG", 6, 7)]


def test_iob1_inside_starts_entities_and_b_splits_adjacent_ones():
    tags = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG"]
    result = convert_to_bio_counted(tags, "IOB1")
    assert result.tags == ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"]
    assert result.repaired == 0


def test_iobes_conversion():
    tags = ["S-PER", "B-LOC", "I-LOC", "E-LOC", "O", "B-geo-loc", "E-geo-loc", "S-PER", "S-PER"]
    assert convert_to_bio(tags, "IOBES") == [
        "B-PER", "B-LOC", "I-LOC", "I-LOC", "O", "B-geo-loc", "I-geo-loc", "B-PER", "B-PER"
    ]
    assert convert_to_bio_counted(tags, "iobes").repaired == 0


def test_iobes_malformed_continuations_are_repaired_and_counted():
    # E- with nothing open, then I- after a closed S- entity, then E- closing that I-.
    result = convert_to_bio_counted(["E-PER", "S-PER", "I-PER", "E-PER", "E-PER"], "IOBES")
    assert result.tags == ["B-PER", "B-PER", "B-PER", "I-PER", "B-PER"]
    assert result.repaired == 3


def test_bilou_conversion():
    tags = ["U-PER", "B-LOC", "I-LOC", "L-LOC", "O", "B-ORG", "L-ORG", "U-ORG"]
    result = convert_to_bio_counted(tags, "BILOU")
    assert result.tags == ["B-PER", "B-LOC", "I-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "B-ORG"]
    assert result.repaired == 0


@pytest.mark.parametrize(
    "tags, scheme",
    [(["O", "E-PER"], "BIO"), (["S-PER"], "IOB1"), (["L-PER"], "IOBES"), (["S-PER"], "BILOU"), (["E-X"], "BILOU")],
)
def test_prefix_not_allowed_in_scheme(tags, scheme):
    with pytest.raises(ValueError, match=rf"token {len(tags) - 1}: tag '{tags[-1]}' is not allowed in scheme {scheme}"):
        convert_to_bio(tags, scheme)


def test_invalid_tag_inside_conversion_names_tag_and_position():
    with pytest.raises(ValueError, match=r"token 2: invalid tag 'X-PER'"):
        convert_to_bio(["O", "B-PER", "X-PER"], "BIO")


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown tag scheme 'IOB3'"):
        convert_to_bio(["O"], "IOB3")
    with pytest.raises(ValueError, match="unknown tag scheme 'auto'"):
        convert_to_bio(["O"], "auto")


def _encode_from_spans(length, spans, scheme):
    """Independent encoder: write (type, start, end) spans in a scheme, for round-trip checks."""
    tags = ["O"] * length
    previous_end, previous_type = None, None
    for entity_type, start, end in spans:
        size = end - start + 1
        for i in range(start, end + 1):
            if scheme == "BIO":
                prefix = "B" if i == start else "I"
            elif scheme == "IOB1":
                touches_same = i == start and previous_end == start - 1 and previous_type == entity_type
                prefix = "B" if touches_same else "I"
            else:
                single, last = ("S", "E") if scheme == "IOBES" else ("U", "L")
                prefix = single if size == 1 else "B" if i == start else last if i == end else "I"
            tags[i] = f"{prefix}-{entity_type}"
        previous_end, previous_type = end, entity_type
    return tags


def _random_spans(rng, length):
    spans, i = [], 0
    while i < length:
        if rng.random() < 0.4:
            end = min(length - 1, i + rng.randrange(3))
            spans.append((rng.choice(["PER", "geo-loc"]), i, end))
            i = end + 1
        else:
            i += 1
    return spans


@pytest.mark.parametrize("scheme", ["BIO", "IOB1", "IOBES", "BILOU"])
def test_round_trip_on_random_sequences(scheme):
    rng = random.Random(0)
    for _ in range(300):
        length = rng.randrange(1, 12)
        spans = _random_spans(rng, length)
        expected = _encode_from_spans(length, spans, "BIO")
        result = convert_to_bio_counted(_encode_from_spans(length, spans, scheme), scheme)
        assert result.tags == expected
        assert result.repaired == 0
        assert [(t, s, e) for t, s, e in get_entities(result.tags)] == spans


def test_detect_scheme():
    assert detect_scheme([["B-PER", "I-PER", "O"], ["O", "B-LOC"]]) == "BIO"
    assert detect_scheme([["I-PER", "I-PER", "B-PER", "O"], ["O", "I-LOC"]]) == "IOB1"
    assert detect_scheme([["I-PER", "O"], ["I-LOC", "I-LOC"]]) == "IOB1"
    assert detect_scheme([["S-PER", "O", "B-LOC", "E-LOC"]]) == "IOBES"
    assert detect_scheme([["B-LOC", "I-LOC", "E-LOC"]]) == "IOBES"
    assert detect_scheme([["U-PER", "O"], ["B-LOC", "L-LOC"]]) == "BILOU"
    assert detect_scheme([["O", "O"], []]) == "BIO"
    assert detect_scheme([["B-PER", "B-PER"]]) == "BIO"


def test_detect_scheme_noisy_bio_is_bio():
    # An orphan I- alone would suggest IOB1, but B- after O is never used by IOB1.
    assert detect_scheme([["O", "I-PER", "O"], ["O", "B-LOC", "I-LOC"]]) == "BIO"


def test_detect_scheme_errors():
    with pytest.raises(ValueError, match="mix IOBES"):
        detect_scheme([["S-PER"], ["U-PER"]])
    with pytest.raises(ValueError, match="invalid tag 'Q-PER'"):
        detect_scheme([["O", "Q-PER"]])
    with pytest.raises(TypeError, match="one sequence of tags per sentence"):
        detect_scheme(["B-PER", "O"])


def test_entity_types_and_label_list():
    types = entity_types(["O", "B-geo-loc", "I-geo-loc", "S-PER", "B-company", "U-PER"])
    assert types == ["PER", "company", "geo-loc"]
    assert bio_label_list(["b", "a", "a"]) == ["O", "B-a", "I-a", "B-b", "I-b"]
    assert bio_label_list(types) == ["O", "B-PER", "I-PER", "B-company", "I-company", "B-geo-loc", "I-geo-loc"]
    assert bio_label_list([]) == ["O"]
    with pytest.raises(ValueError, match="invalid entity type ''"):
        bio_label_list(["PER", ""])
