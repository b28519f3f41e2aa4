"""The ``Idempotency-Key`` request header of the mutating routes.

The API only validates the key and passes it to ``BridgeService.execute``; the service keeps
the first verdict per (device, key) and replays it for a retry with the same request
(``CommandVerdict.replayed``), or raises ``IdempotencyConflict`` (422) when the same key
comes with a different request. A replayed verdict is marked with the response header
``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from fastapi import Depends, Header

from metal.host.bridge.model import InvalidInput

__all__ = ["HEADER", "IdempotencyKeyHeader", "MAX_LEN", "REPLAYED_HEADER", "check_key"]

HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
MAX_LEN: Final = 128
_PRINTABLE: Final = re.compile(r"[\x20-\x7e]+")


def check_key(value: str | None) -> str | None:
    """The key, or None when the header is absent; InvalidInput (422) when malformed."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_LEN:
        raise InvalidInput(f"header {HEADER} must be 1 to {MAX_LEN} characters long, got "
                           f"{len(value)}", field=HEADER)
    if not _PRINTABLE.fullmatch(value):
        raise InvalidInput(f"header {HEADER} must contain printable ASCII characters only "
                           f"(0x20..0x7e)", field=HEADER)
    return value


async def idempotency_key(
    key: Annotated[str | None, Header(
        alias=HEADER,
        description=f"Makes a retry safe: a second request with the same key (1..{MAX_LEN} "
        "printable ASCII characters) gets the first verdict back instead of running again.",
        examples=["3f1c2d9e-reboot-1"],
    )] = None,
) -> str | None:
    return check_key(key)


IdempotencyKeyHeader = Annotated[str | None, Depends(idempotency_key)]
