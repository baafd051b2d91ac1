"""/metrics can require a bearer token; /health stays open for orchestrators."""

from typing import Any

from starlette.testclient import TestClient

from services.runtime.health import Readiness


def client(token: str | None) -> TestClient:
    none: Any = None  # the token check comes before anything reads the database or the broker
    return TestClient(Readiness(none, none, none, metrics_token=token).app([]))


def test_metrics_answer_only_the_bearer_of_the_token() -> None:
    with client("s3cret-token") as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        answered = http.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert answered.status_code == 200 and "homeward_" in answered.text
        assert http.get("/health").status_code == 200


def test_without_a_token_metrics_are_open() -> None:
    with client(None) as http:
        assert http.get("/metrics").status_code == 200
