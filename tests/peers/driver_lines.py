"""What the Python client drivers (py_session.py, cluster_client.py) share: one JSON line per
event on stdout, and an error's text with the errors an exception group carries."""

from __future__ import annotations

import json
from typing import Any


def say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, default=str), flush=True)


def error_text(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return f"{type(e).__name__}: " + "; ".join(error_text(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"
