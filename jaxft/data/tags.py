"""Tag schemes for token classification, and conversion to strict IOB2 ("BIO").

A tag is ``"O"`` or ``PREFIX-TYPE``. The prefix is one letter (B, I, E, S, L, U); the type is everything
after the FIRST ``-``, so types may contain ``-`` themselves (``B-geo-loc`` has type ``geo-loc``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OUTSIDE = "O"
SCHEMES = ("BIO", "IOB1", "IOBES", "BILOU")
_ALLOWED_PREFIXES = {"BIO": "BI", "IOB1": "BI", "IOBES": "BIES", "BILOU": "BILU"}
_ALIASES = {"IOB2": "BIO", "BIOES": "IOBES"}
_ALL_PREFIXES = frozenset("BIESLU")
_CONTINUATION_PREFIXES = frozenset("IEL")
_CLOSING_PREFIXES = frozenset("ESLU")  # the entity ends on this token


def parse_tag(tag: str) -> tuple[str, str | None]:
    """Split a tag into (prefix, type): ``"B-geo-loc"`` -> ``("B", "geo-loc")``, ``"O"`` -> ``("O", None)``.

    Raises ValueError naming the tag when it is not ``O`` or ``PREFIX-TYPE`` with a known prefix.
    """
    if not isinstance(tag, str):
        raise ValueError(f"invalid tag {tag!r}: tags must be strings")
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, separator, entity_type = tag.partition("-")
    if not separator or prefix not in _ALL_PREFIXES:
        raise ValueError(
            f"invalid tag {tag!r}: expected 'O' or PREFIX-TYPE with PREFIX one of B, I, E, S, L, U "
            "(for example 'B-PER')"
        )
    if not entity_type:
        raise ValueError(f"invalid tag {tag!r}: the entity type after {prefix + '-'!r} is empty")
    return prefix, entity_type


def normalize_scheme(scheme: str, allow_auto: bool = False) -> str:
    """Canonical scheme name ("BIO", "IOB1", "IOBES", "BILOU", or "auto" when allowed); case-insensitive."""
    name = scheme.strip().upper() if isinstance(scheme, str) else scheme
    name = _ALIASES.get(name, name)
    if name in SCHEMES:
        return name
    if allow_auto and name == "AUTO":
        return "auto"
    choices = ", ".join(SCHEMES + (("auto",) if allow_auto else ()))
    raise ValueError(f"unknown tag scheme {scheme!r}: expected one of {choices}")


@dataclass(frozen=True)
class BioConversion:
    """Result of a conversion to strict IOB2.

    ``repaired`` counts continuation tags (I-, E-, L-) that had no open entity of their type before them
    and were therefore read as the start of a new entity (B-), as seqeval's default mode reads them. In
    IOB1 an I- that starts an entity is the scheme's normal form, not a repair.
    """

    tags: list[str]
    repaired: int


def convert_to_bio_counted(tags: Sequence[str], scheme: str) -> BioConversion:
    """Convert one sentence's tags from ``scheme`` to strict IOB2, counting repairs (see BioConversion)."""
    scheme = normalize_scheme(scheme)
    allowed = _ALLOWED_PREFIXES[scheme]
    converted: list[str] = []
    repaired = 0
    open_type: str | None = None  # type of the entity that the next token may continue
    for position, tag in enumerate(tags):
        try:
            prefix, entity_type = parse_tag(tag)
        except ValueError as error:
            raise ValueError(f"token {position}: {error}") from None
        if prefix == OUTSIDE:
            converted.append(OUTSIDE)
            open_type = None
            continue
        if prefix not in allowed:
            raise ValueError(
                f"token {position}: tag {tag!r} is not allowed in scheme {scheme} "
                f"(allowed prefixes: {', '.join(allowed)})"
            )
        if prefix in _CONTINUATION_PREFIXES and entity_type == open_type:
            converted.append(f"I-{entity_type}")
        else:
            converted.append(f"B-{entity_type}")
            if prefix in _CONTINUATION_PREFIXES and not (scheme == "IOB1" and prefix == "I"):
                repaired += 1
        open_type = None if prefix in _CLOSING_PREFIXES else entity_type
    return BioConversion(converted, repaired)


def convert_to_bio(tags: Sequence[str], scheme: str) -> list[str]:
    """Convert one sentence's tags from ``scheme`` ("BIO", "IOB1", "IOBES", "BILOU") to strict IOB2."""
    return convert_to_bio_counted(tags, scheme).tags


def detect_scheme(sentences_tags: Iterable[Sequence[str]]) -> str:
    """Guess the scheme of a corpus from its tag sequences (one sequence per sentence).

    E-/S- prefixes mean IOBES, L-/U- mean BILOU. Otherwise IOB1 when some entity starts with I- and every
    B- follows a token of the same type (IOB1 uses B- only between two adjacent same-type entities);
    else BIO.
    """
    prefixes: set[str] = set()
    entity_starts_with_inside = False
    begin_outside_iob1_use = False
    for tags in sentences_tags:
        if isinstance(tags, str):
            raise TypeError("detect_scheme expects one sequence of tags per sentence, got a string")
        previous_type: str | None = None
        for tag in tags:
            prefix, entity_type = parse_tag(tag)
            prefixes.add(prefix)
            if prefix == "I" and entity_type != previous_type:
                entity_starts_with_inside = True
            if prefix == "B" and entity_type != previous_type:
                begin_outside_iob1_use = True
            previous_type = entity_type
    has_iobes = bool(prefixes & {"E", "S"})
    has_bilou = bool(prefixes & {"L", "U"})
    if has_iobes and has_bilou:
        raise ValueError("tags mix IOBES prefixes (E-, S-) with BILOU prefixes (L-, U-)")
    if has_iobes:
        return "IOBES"
    if has_bilou:
        return "BILOU"
    if entity_starts_with_inside and not begin_outside_iob1_use:
        return "IOB1"
    return "BIO"


def entity_types(tags: Iterable[str]) -> list[str]:
    """Sorted distinct entity types in a flat iterable of tags (``"B-geo-loc"`` -> ``"geo-loc"``)."""
    types = set()
    for tag in tags:
        _, entity_type = parse_tag(tag)
        if entity_type is not None:
            types.add(entity_type)
    return sorted(types)


def bio_label_list(types: Iterable[str]) -> list[str]:
    """Label list in a fixed order: ``O``, then for each type in sorted order ``B-type``, ``I-type``."""
    unique = set(types)
    for entity_type in unique:
        if not isinstance(entity_type, str) or not entity_type:
            raise ValueError(f"invalid entity type {entity_type!r}: types must be non-empty strings")
    return [OUTSIDE] + [f"{prefix}-{t}" for t in sorted(unique) for prefix in "BI"]
