"""Fixtures for the API tests: a FakeBridge behind the real app, through Starlette's
TestClient (used as a context manager: one event loop for HTTP and WebSocket sessions, so
commands and streams share the fake's live queues)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.fake_bridge import FakeBridge
from metal.host.bridge.api import ApiSettings, create_app


@pytest.fixture
def fake() -> FakeBridge:
    return FakeBridge()


@pytest.fixture
def app(fake: FakeBridge) -> FastAPI:
    return create_app(fake, settings=ApiSettings(ws_send_timeout_s=5.0))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c
