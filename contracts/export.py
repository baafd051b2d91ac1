"""Writes one JSON Schema per topic (the envelope with that topic's payload) to `contracts/schemas/`."""

import json
from pathlib import Path
from typing import Any

from contracts.registry import PAYLOAD_TYPES, envelope_adapter

SCHEMA_DIR = Path(__file__).parent / "schemas"


def schema_for(topic: str) -> dict[str, Any]:
    schema = envelope_adapter(topic).json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://homeward.example/schemas/{topic}.json"
    schema["title"] = topic
    # The envelope's `type` must equal the topic name.
    schema["properties"]["type"] = {"const": topic, "title": "Type", "type": "string"}
    return schema


def render(topic: str) -> str:
    return json.dumps(schema_for(topic), indent=2, sort_keys=True) + "\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic in PAYLOAD_TYPES:
        path = directory / f"{topic}.json"
        path.write_text(render(topic), encoding="utf-8")
        written.append(path)
    return written
