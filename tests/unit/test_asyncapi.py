"""The AsyncAPI 3.0 document: generated from the models and checked in (a drift test, like the
JSON Schemas), covering every topic with its key, headers and payload; its HTML view names every
topic, and `homeward contracts docs` serves it."""

import subprocess
import sys
import time
from typing import Any

import httpx
import yaml

from contracts import asyncapi
from contracts.registry import INBOUND_TOPICS, PAYLOAD_TYPES, TOPIC_KEYS, dlq_topic
from contracts.signing import SIGNATURE_HEADER, SIGNER_HEADER
from services.devstack.embedded import free_port
from tests.support import clean_env

SERVE_SECONDS_MAX = 20.0


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in refs(item)]
    return []


def resolve(document: dict[str, Any], reference: str) -> Any:
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_the_checked_in_document_is_what_the_models_generate() -> None:
    assert asyncapi.DOCUMENT.read_text() == asyncapi.render(), (
        "contracts/asyncapi.yaml is stale: run `homeward contracts export` and commit it"
    )


def test_every_topic_is_a_channel_with_its_key_headers_payload_and_operation() -> None:
    document = yaml.safe_load(asyncapi.DOCUMENT.read_text())
    assert document["asyncapi"] == "3.0.0"
    assert set(document["channels"]) == {*PAYLOAD_TYPES, *(dlq_topic(topic) for topic in PAYLOAD_TYPES)}
    for reference in refs(document):
        resolve(document, reference)  # every reference resolves
    messages = document["components"]["messages"]
    for topic in PAYLOAD_TYPES:
        (message,) = (resolve(document, ref["$ref"]) for ref in document["channels"][topic]["messages"].values())
        assert TOPIC_KEYS[topic] in message["bindings"]["kafka"]["key"]["description"]
        envelope = resolve(document, message["payload"]["$ref"])
        assert envelope["properties"]["type"]["const"] == topic and "data" in envelope["required"]
        action = {operation["action"] for operation in document["operations"].values()
                  if operation["channel"]["$ref"] == f"#/channels/{topic}"}  # fmt: skip
        assert action == {"receive" if topic in INBOUND_TOPICS else "send"}
    evidence = messages["ArrivalEvidenceV1"]["headers"]
    assert set(evidence["required"]) == {SIGNER_HEADER, SIGNATURE_HEADER}
    letters = messages["ArrivalEvidenceV1DeadLetter"]["headers"]
    assert {"x-error-code", "x-error-detail", "x-original-topic"} <= set(letters["required"])


def test_the_html_view_names_every_topic_and_field() -> None:
    page = asyncapi.html_view()
    for topic in PAYLOAD_TYPES:
        assert f'<section id="{topic}">' in page and f'<section id="{dlq_topic(topic)}">' in page
    assert "data.person.given_name" in page and SIGNATURE_HEADER in page
    assert "<script" not in page


def test_homeward_contracts_docs_serves_the_page_and_the_document() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "services.ops.cli", "contracts", "docs", "--port", str(port)],
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + SERVE_SECONDS_MAX
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, "the docs server did not answer"
                time.sleep(0.2)
        assert page.status_code == 200 and "arrival.evidence.v1" in page.text
        document = httpx.get(f"http://127.0.0.1:{port}/asyncapi.yaml", timeout=2)
        assert yaml.safe_load(document.text)["asyncapi"] == "3.0.0"
    finally:
        server.terminate()
        server.wait(10)
