"""The bridge's REST/WebSocket API (FastAPI): see :func:`create_app` and docs/api.md."""

from metal.host.bridge.api.app import API_VERSION, ApiSettings, create_app

__all__ = ["API_VERSION", "ApiSettings", "create_app"]
