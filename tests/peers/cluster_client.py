#!/usr/bin/env python3
"""Several sessions of the official Python MCP client (`mcp==2.3.0`), calling in a loop.

Used by tether's cluster proof (`crates/tether/tests/cluster_proof.rs`): the sessions keep
calling through a round-robin balancer in front of several replicas while the test kills,
stops and restarts them.

    .peers/venv/bin/python tests/peers/cluster_client.py --url http://127.0.0.1:PORT/mcp \
        [--sessions 3] [--prefix py] [--work-ms 150] [--pause-ms 50]

Each session connects (Streamable HTTP, handshake era, so it has a session id and its GET
stream open), sets its log level, prints `{"event": "ready", "session": K, "sid": ...}` and
then calls in a loop, in turn: `echo` (read-only), `work` (unannotated: the test checks it
never runs twice upstream), `later` (its log message arrives on the GET stream) and `bump`
(unannotated, stateful). Every call carries a unique `message` key, `<prefix><K>-<N>`, and
prints one line (and the session pauses `--pause-ms` before the next):

    {"event": "call", "session": K, "sid": ..., "tool": ..., "key": ..., "ok": true|false,
     "text": ..., "code": JSON-RPC error code or null, "error": ..., "ms": ..., "statuses": [...]}

A line `stop` on stdin (or its end) lets each session finish its call, close (DELETE) and
print `{"event": "done", "session": K, "sid": ..., "sids": [every session id it was given],
"logs": N}`; then the driver exits 0. Every call has a deadline.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from driver_lines import error_text, say

CALL_TIMEOUT_S = 45
TOOLS = ["echo", "work", "later", "bump"]


async def session(k: int, args: argparse.Namespace, stop: anyio.Event) -> None:
    statuses: list[int] = []
    sids: list[str] = []
    logs = 0

    async def on_response(response: httpx2.Response) -> None:
        if response.request.method in ("POST", "DELETE"):
            statuses.append(response.status_code)
        sid = response.headers.get("mcp-session-id")
        if sid and sid not in sids:
            sids.append(sid)

    @asynccontextmanager
    async def transport() -> Any:
        async with create_mcp_http_client() as http:
            http.event_hooks = {"request": [], "response": [on_response]}
            async with streamable_http_client(args.url, http_client=http) as streams:
                yield streams

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        nonlocal logs
        logs += 1

    client = Client(
        transport(),
        mode="legacy",
        read_timeout_seconds=CALL_TIMEOUT_S,
        logging_callback=on_log,
        client_info=types.Implementation(name=f"cluster-proof-{args.prefix}{k}", version="1.0"),
    )
    sid = lambda: sids[0] if sids else None  # noqa: E731
    try:
        async with client:
            with anyio.fail_after(CALL_TIMEOUT_S):
                await client.set_logging_level("info")
            say({"event": "ready", "session": k, "sid": sid()})
            n = 0
            while not stop.is_set():
                tool = TOOLS[n % len(TOOLS)]
                key = f"{args.prefix}{k}-{n}"
                arguments: dict[str, Any] = {"message": key}
                if tool == "work":
                    arguments["ms"] = args.work_ms
                elif tool == "later":
                    arguments["ms"] = 50
                start = len(statuses)
                t0 = time.monotonic()
                line: dict[str, Any] = {"event": "call", "session": k, "sid": sid(), "tool": tool, "key": key}
                try:
                    with anyio.fail_after(CALL_TIMEOUT_S):
                        result = await client.call_tool(tool, arguments)
                    text = result.content[0].text if result.content else None
                    line.update(ok=not result.is_error, text=text, code=None)
                except MCPError as e:
                    line.update(ok=False, code=e.code, error=e.message)
                except Exception as e:  # noqa: BLE001 - every failure is reported to the test
                    line.update(ok=False, code=None, error=error_text(e))
                line.update(ms=round((time.monotonic() - t0) * 1000), statuses=statuses[start:])
                say(line)
                n += 1
                await anyio.sleep(args.pause_ms / 1000)
    except Exception as e:  # noqa: BLE001 - reported; the test decides
        say({"event": "closed", "session": k, "sid": sid(), "error": error_text(e)})
    say({"event": "done", "session": k, "sid": sid(), "sids": sids, "logs": logs})


async def main(args: argparse.Namespace) -> int:
    stop = anyio.Event()

    async def watch_stdin() -> None:
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line or line.strip() == "stop":
                stop.set()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_stdin)
        async with anyio.create_task_group() as sessions:
            for k in range(args.sessions):
                sessions.start_soon(session, k, args, stop)
        tg.cancel_scope.cancel()
    say({"event": "exit"})
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--prefix", default="py")
    p.add_argument("--work-ms", type=int, default=150)
    p.add_argument("--pause-ms", type=int, default=50)
    sys.exit(anyio.run(main, p.parse_args()))
