#!/usr/bin/env python3
"""One session of the official Python MCP client (`mcp==2.3.0`), driven line by line.

Used by tether's dashboard browser test: the session must stay open while an operator looks at
it, refreshes it and terminates it in the dashboard, and the test decides when the client makes
its next call.

    .peers/venv/bin/python tests/peers/py_session.py --url http://127.0.0.1:PORT/mcp \
        [--name NAME] [--version VERSION]

It connects (Streamable HTTP) with clientInfo NAME/VERSION, calls the `echo` tool once, prints
`{"event": "ready", "text": ...}`, then reads commands from stdin, one a line:

    call MESSAGE   calls `echo` with MESSAGE; prints {"event": "call", "ok": true, "text": ...} or
                   {"event": "call", "ok": false, "error": ..., "statuses": [HTTP statuses seen]}
    quit           closes the session and exits 0

Every call has a deadline; end of input ends the driver.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from driver_lines import error_text, say

CALL_TIMEOUT_S = 20


async def main(args: argparse.Namespace) -> int:
    statuses: list[int] = []

    async def on_response(response: httpx2.Response) -> None:
        if response.request.method in ("POST", "DELETE"):
            statuses.append(response.status_code)

    @asynccontextmanager
    async def transport() -> Any:
        async with create_mcp_http_client() as http:
            http.event_hooks = {"request": [], "response": [on_response]}
            async with streamable_http_client(args.url, http_client=http) as streams:
                yield streams

    async def call(message: str) -> dict[str, Any]:
        start = len(statuses)
        try:
            with anyio.fail_after(CALL_TIMEOUT_S):
                result = await client.call_tool("echo", {"message": message})
            text = result.content[0].text if result.content else None
            return {"ok": not result.is_error, "text": text, "statuses": statuses[start:]}
        except Exception as e:  # noqa: BLE001 - every failure is reported to the test
            return {"ok": False, "error": error_text(e), "statuses": statuses[start:]}

    # The handshake era: the dashboard test watches a Streamable HTTP session that an operator
    # terminates (the client's next call then gets 404). In `auto` mode the SDK would get
    # 2026-07-28 through tether, which has no client session to terminate.
    client = Client(
        transport(),
        mode="legacy",
        read_timeout_seconds=CALL_TIMEOUT_S,
        client_info=types.Implementation(name=args.name, version=args.version),
    )
    try:
        async with client:
            first = await call("hello")
            say({"event": "ready", **first})
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline)
                if not line or line.strip() == "quit":
                    break
                cmd, _, rest = line.strip().partition(" ")
                if cmd == "call":
                    say({"event": "call", **(await call(rest))})
                else:
                    say({"event": "error", "error": f"unknown command {cmd!r}"})
    except Exception as e:  # noqa: BLE001 - closing a terminated session may fail; say so
        say({"event": "closed", "error": error_text(e)})
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--name", default="tether-dashboard-e2e")
    p.add_argument("--version", default="0.0.1")
    sys.exit(anyio.run(main, p.parse_args()))
