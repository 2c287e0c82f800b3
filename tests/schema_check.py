"""Validate a document against one of the JSON schemas in docs/schemas/ (cross-file $refs resolved)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, List

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


@cache
def _validator(name: str):
    import jsonschema
    from referencing import Registry, Resource

    schemas = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")}
    registry = Registry().with_resources([(s["$id"], Resource.from_contents(s)) for s in schemas.values()])
    jsonschema.Draft202012Validator.check_schema(schemas[name])
    return jsonschema.Draft202012Validator(schemas[name], registry=registry)


def schema_errors(document: Any, name: str) -> List[str]:
    """Every violation of ``docs/schemas/<name>`` by ``document``, one line each (empty when it conforms)."""
    return [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in _validator(name).iter_errors(document)]
