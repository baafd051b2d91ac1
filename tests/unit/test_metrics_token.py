"""/metrics can require a bearer token; /health stays open for orchestrators."""

from typing import Any

import httpx

from services.runtime.health import Readiness


def client(token: str | None) -> httpx.AsyncClient:
    none: Any = None  # the token check comes before anything reads the database or the broker
    app = Readiness(none, none, none, metrics_token=token).app([])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


async def test_metrics_answer_only_the_bearer_of_the_token() -> None:
    async with client("s3cret-token") as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await http.get("/metrics", headers={"Authorization": "Basic s3cret-token"})).status_code == 401
        answered = await http.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert answered.status_code == 200 and "homeward_" in answered.text
        assert (await http.get("/health")).status_code == 200


async def test_without_a_token_metrics_are_open() -> None:
    async with client(None) as http:
        assert (await http.get("/metrics")).status_code == 200


async def test_an_empty_token_shuts_metrics_rather_than_opening_them() -> None:
    async with client("") as http:
        assert (await http.get("/metrics", headers={"Authorization": "Bearer "})).status_code == 401
        assert (await http.get("/metrics")).status_code == 401
