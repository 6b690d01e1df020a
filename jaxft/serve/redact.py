"""Data masking for NER models, `serve --redact TYPES`: the input text with every predicted entity of the
chosen types replaced by its type in brackets ("John lives in Paris" -> "[PER] lives in [LOC]").

POST /redact {"texts": [...]} -> {"predictions": [{"text": masked text, "redacted": [{"type", "start", "end",
"score"}]}]}, the masked spans' character offsets in the original text; the Open Inference Protocol route adds
a "redacted" BYTES output with the masked texts. The other routes still answer the entities with their text:
a deployment that must not return unmasked text exposes only /redact (at its ingress or gateway).
"""

from __future__ import annotations

from typing import Sequence

from jaxft.data.tags import entity_types


def parse_types(spec: str, labels: Sequence[str]) -> tuple[str, ...]:
    """"PER,LOC" or "all" -> entity types, each one the model predicts (ValueError naming the ones it does not)."""
    available = entity_types(labels)
    if spec.strip().lower() == "all":
        return tuple(available)
    types = [part.strip() for part in spec.split(",") if part.strip()]
    if not types:
        raise ValueError(f"--redact: no entity type given; the model's types are {', '.join(available)} (or 'all')")
    unknown = [t for t in types if t not in available]
    if unknown:
        raise ValueError(f"--redact: {', '.join(unknown)} not among the model's entity types "
                         f"({', '.join(available)})")
    return tuple(dict.fromkeys(types))


def redact(result: dict, types: Sequence[str]) -> dict:
    """An NER result {"text", "entities"} -> {"text": masked, "redacted": [the masked entities' type, start,
    end, score]}."""
    text = result["text"]
    masked = sorted((e for e in result["entities"] if e["type"] in types), key=lambda e: e["start"])
    pieces, position = [], 0
    for entity in masked:  # entities are disjoint spans, in text order
        pieces += [text[position:entity["start"]], f"[{entity['type']}]"]
        position = entity["end"]
    pieces.append(text[position:])
    return {"text": "".join(pieces),
            "redacted": [{key: e[key] for key in ("type", "start", "end", "score")} for e in masked]}
