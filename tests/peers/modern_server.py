#!/usr/bin/env python3
"""A modern-only MCP server (revision 2026-07-28) built with the official Python SDK (`mcp==2.3.0`).

Used by tether's bridge tests (`crates/tether/tests/bridge_modern.rs`) as the REMOTE behind
`tether bridge`: the SDK's `MCPServer` over Streamable HTTP, wrapped so that it serves ONLY
2026-07-28. The SDK routes on the `MCP-Protocol-Version` header alone; requests without it, or
with a handshake-era value, would reach its legacy (initialize/session) path. The wrapper answers
those the way a modern-only server does (the TypeScript SDK's `legacy: 'reject'` posture): a
request gets HTTP 400 with JSON-RPC error -32022 `{"supported": ["2026-07-28"], "requested": …}`
(for `initialize`, `requested` is its `protocolVersion`), a notification 202 and is dropped, GET
and DELETE 405.

    .peers/venv/bin/python tests/peers/modern_server.py --port PORT
    .peers/venv/bin/python tests/peers/modern_server.py --stdio

Prints `modern server ready on port PORT` once it listens (uvicorn logs "address already in
use" when the port is taken). Serves `/mcp`.

With `--stdio` it serves newline-delimited JSON-RPC on stdin/stdout instead, again 2026-07-28
only: the SDK's stdio runner serves both eras (its first request decides), so requests that do
not carry the 2026-07-28 envelope (`initialize` among them) are answered -32022 here and never
reach it, and notifications without the envelope other than `notifications/cancelled` are
dropped.

Tools:
  echo {message}            "Echo: <message>" (readOnlyHint)
  deploy {region, version}  "deployed <version> to <region>"; `region` carries
                            `x-mcp-header: Region`, so a call must mirror it in `Mcp-Param-Region`
                            (the SDK checks it against the body: -32020 otherwise)
  slow {seconds}            reports progress every 0.25 s, then "slow done" (readOnly, idempotent)
  slow_unsafe {seconds}     the same, not annotated (not safe to repeat)
  log_levels                logs "at <level>" at debug, info, warning, error; "logged"
  greet                     asks the client for a name (elicitation, through an
                            `input_required` result at 2026-07-28); "Hello, <name>!"
  bump                      increments `test://counter` and publishes resources/updated for it
Resources: `test://static` ("static text"), `test://counter` ("count <n>").
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Annotated, Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

MODERN = ["2026-07-28"]
HANDSHAKE = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]

server = MCPServer("modern-test-server", instructions="A modern-only test server for tether.")
counter = {"n": 0}


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def echo(message: str) -> str:
    """Echoes the message."""
    return f"Echo: {message}"


@server.tool()
def deploy(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], version: str) -> str:
    """Pretends to deploy; `region` is mirrored in a header."""
    return f"deployed {version} to {region}"


async def _slow(seconds: float, ctx: Context) -> str:
    steps = max(1, int(seconds / 0.25))
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
        await anyio.sleep(seconds / steps)
    return "slow done"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
async def slow(seconds: float, ctx: Context) -> str:
    """Takes a while, reporting progress; safe to repeat."""
    return await _slow(seconds, ctx)


@server.tool()
async def slow_unsafe(seconds: float, ctx: Context) -> str:
    """Takes a while, reporting progress; not safe to repeat."""
    return await _slow(seconds, ctx)


@server.tool()
async def log_levels(ctx: Context) -> str:
    """Logs one message at each of four levels."""
    for level in ("debug", "info", "warning", "error"):
        await ctx.log(level, f"at {level}")
    return "logged"


class Person(BaseModel):
    name: str


def ask_name() -> Elicit[Person]:
    return Elicit("What is your name?", Person)


@server.tool()
def greet(person: Annotated[Person, Resolve(ask_name)]) -> str:
    """Greets whoever the client says it is."""
    return f"Hello, {person.name}!"


@server.tool()
async def bump(ctx: Context) -> str:
    """Changes test://counter and tells listeners."""
    counter["n"] += 1
    await ctx.notify_resource_updated("test://counter")
    return f"count {counter['n']}"


@server.resource("test://static")
def static() -> str:
    return "static text"


@server.resource("test://counter")
def count() -> str:
    return f"count {counter['n']}"


class ModernOnly:
    """ASGI wrapper: only 2026-07-28 requests reach the SDK; handshake-era traffic is refused."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        version = headers.get("mcp-protocol-version")
        if version is not None and version not in HANDSHAKE:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await respond(send, 405, b"", [(b"allow", b"POST")])
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        try:
            msg = json.loads(body)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            err = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
            return await respond(send, 400, json.dumps(err).encode(), [(b"content-type", b"application/json")])
        if "id" not in msg:
            return await respond(send, 202, b"", [])
        requested = version
        if msg.get("method") == "initialize":
            requested = (msg.get("params") or {}).get("protocolVersion", version)
        err = {
            "jsonrpc": "2.0",
            "id": msg.get("id"),
            "error": {
                "code": -32022,
                "message": "Unsupported protocol version: this server speaks only 2026-07-28",
                "data": {"supported": MODERN, "requested": requested},
            },
        }
        await respond(send, 400, json.dumps(err).encode(), [(b"content-type", b"application/json")])


async def respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def claims_modern(msg: Any) -> bool:
    meta = (getattr(msg, "params", None) or {}).get("_meta") or {}
    return isinstance(meta, dict) and meta.get("io.modelcontextprotocol/protocolVersion") in MODERN


async def serve_stdio() -> None:
    """The SDK's stdio runner behind a filter that lets only 2026-07-28 traffic through."""
    from mcp.server.stdio import stdio_server
    from mcp.shared.message import SessionMessage
    from mcp_types import ErrorData, JSONRPCError, JSONRPCNotification, JSONRPCRequest

    async with stdio_server() as (read_stream, write_stream):
        to_server, from_filter = anyio.create_memory_object_stream(64)

        async def filter_in() -> None:
            async with to_server:
                async for item in read_stream:
                    msg = item.message if isinstance(item, SessionMessage) else None
                    if isinstance(msg, JSONRPCRequest) and (msg.method == "initialize" or not claims_modern(msg)):
                        params = msg.params or {}
                        requested = params.get("protocolVersion") if msg.method == "initialize" else None
                        err = JSONRPCError(
                            jsonrpc="2.0",
                            id=msg.id,
                            error=ErrorData(
                                code=-32022,
                                message="Unsupported protocol version: this server speaks only 2026-07-28",
                                data={"supported": MODERN, "requested": requested or "none"},
                            ),
                        )
                        await write_stream.send(SessionMessage(err))
                        continue
                    if (
                        isinstance(msg, JSONRPCNotification)
                        and msg.method != "notifications/cancelled"
                        and not claims_modern(msg)
                    ):
                        continue
                    await to_server.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(filter_in)
            low = server._lowlevel_server
            await low.run(from_filter, write_stream, low.create_initialization_options())
            tg.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--port", type=int)
    mode.add_argument("--stdio", action="store_true")
    args = ap.parse_args()
    if args.stdio:
        anyio.run(serve_stdio)
        return
    app = ModernOnly(server.streamable_http_app(streamable_http_path="/mcp"))
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(srv.serve)
            while not srv.started:
                if srv.should_exit:
                    return
                await anyio.sleep(0.02)
            print(f"modern server ready on port {args.port}", flush=True)

    anyio.run(run)
    sys.exit(0 if srv.started else 1)


if __name__ == "__main__":
    main()
