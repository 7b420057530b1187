"""JSON from the network (HTTP bodies and WebSocket frames): every malformed document is a ValueError.

``json.loads`` raises ``RecursionError`` for a document nested about a thousand levels deep (2 KB of
``[``): that escaped as a 500 with a traceback per request, so anyone could flood the error log.
"""

from __future__ import annotations

import json
from typing import Any

JSON_MEDIA_TYPE = "application/json"


def loads(raw: str | bytes) -> Any:
    """``json.loads``, raising ``ValueError`` (never ``RecursionError``) for anything that is not JSON."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
