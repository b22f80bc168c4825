#!/usr/bin/env python3
"""Client driver: the official Python MCP SDK (`mcp==2.3.0`, v2 API) against an MCP server.

Used by tether's integration tests, with tether in front of
`@modelcontextprotocol/server-everything` (or directly against it, as the baseline).

Run it with the peers venv:

    .peers/venv/bin/python tests/peers/py_client.py --url http://127.0.0.1:PORT/mcp \
        [--transport streamable-http|sse] [--mode legacy|auto] [--checks tools,sampling,...]

Output: one JSON object per check on stdout, `{"check": NAME, "ok": BOOL, "detail": ...}`, then a
final line `N passed, N failed`. Exit status 0 when every check passed, 1 when any failed, 2 on a
usage error. Every check opens its own client session (so one failing check cannot poison the
next) and runs under a deadline; a hang is reported as a failure. A watchdog thread ends the
process if even the deadlines fail to fire.

Checks (server-everything tool names are fixed by its dist source):
  tools        tools/list includes `echo`; tools/call `echo` returns "Echo: <our message>".
  sampling     tools/call `trigger-sampling-request`; the server sends sampling/createMessage to
               us, our callback answers with a nonce, the tool result must contain that nonce.
  elicitation  tools/call `trigger-elicitation-request`; the server sends elicitation/create, our
               callback accepts with a nonce as `name`, the tool result must contain it.
  progress     tools/call `trigger-long-running-operation` {duration, steps} with a progress
               token; >= 1 notifications/progress with increasing progress, and the call completes.
  logging      logging/setLevel LEVEL, then tools/call `toggle-simulated-logging` (the server logs
               a random level every 5 s on the session's standalone stream); >= 1
               notifications/message at or above LEVEL, none below it.
  subscribe    resources/list, resources/subscribe to the first resource, tools/call
               `toggle-subscriber-updates`; a notifications/resources/updated for that URI must
               arrive within the wait bound (the server sends one immediately, then every 5 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

ALL_CHECKS = ["tools", "sampling", "elicitation", "progress", "logging", "subscribe"]
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]

# server-everything names (dist/tools/*.js)
ECHO_TOOL = "echo"
SAMPLING_TOOL = "trigger-sampling-request"
ELICITATION_TOOL = "trigger-elicitation-request"
PROGRESS_TOOL = "trigger-long-running-operation"
LOGGING_TOOL = "toggle-simulated-logging"
SUBSCRIBE_TOOL = "toggle-subscriber-updates"

warnings.filterwarnings("ignore", category=DeprecationWarning)
try:
    from mcp import MCPDeprecationWarning

    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
except ImportError:  # pragma: no cover
    pass


def eprint(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


@dataclass
class Recorder:
    """Everything the session's callbacks saw, with monotonic timestamps."""

    t0: float = field(default_factory=time.monotonic)
    notifications: list[tuple[float, Any]] = field(default_factory=list)
    logs: list[tuple[float, types.LoggingMessageNotificationParams]] = field(default_factory=list)
    sampling: list[types.CreateMessageRequestParams] = field(default_factory=list)
    elicitation: list[Any] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    wire: list[str] = field(default_factory=list)
    nonce: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    changed: anyio.Event | None = None

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def poke(self) -> None:
        if self.changed is not None:
            self.changed.set()

    async def wait_for(self, pred: Callable[[], Any], timeout: float) -> Any:
        """Wait until pred() is truthy or timeout elapses; returns pred()'s last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                return v
            self.changed = anyio.Event()
            with anyio.move_on_after(min(left, 0.5)):
                await self.changed.wait()


def make_callbacks(rec: Recorder) -> dict[str, Any]:
    async def sampling_callback(ctx: Any, params: types.CreateMessageRequestParams) -> Any:
        rec.sampling.append(params)
        rec.poke()
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"py-sampled-{rec.nonce}"),
            model="py-client-fake-model",
            stop_reason="endTurn",
        )

    async def elicitation_callback(ctx: Any, params: Any) -> Any:
        rec.elicitation.append(params)
        rec.poke()
        return types.ElicitResult(action="accept", content={"name": f"py-elicited-{rec.nonce}", "check": True, "integer": 7})

    async def logging_callback(params: types.LoggingMessageNotificationParams) -> None:
        rec.logs.append((rec.now(), params))
        rec.poke()

    async def message_handler(message: Any) -> None:
        if isinstance(message, Exception):
            rec.transport_errors.append(repr(message))
        else:
            rec.notifications.append((rec.now(), message))
        rec.poke()

    return {
        "sampling_callback": sampling_callback,
        "elicitation_callback": elicitation_callback,
        "logging_callback": logging_callback,
        "message_handler": message_handler,
    }


def make_transport(args: argparse.Namespace, rec: Recorder) -> Any:
    async def on_request(request: httpx2.Request) -> None:
        method = request.headers.get("mcp-method")
        if method is None and request.method == "POST":
            try:
                body = json.loads(request.content or b"null")
                method = body.get("method") or ("response" if "result" in body or "error" in body else None)
            except Exception:
                method = "?"
        line = f"{rec.now()} -> {request.method} {method or ''} sid={request.headers.get('mcp-session-id', '-')} pv={request.headers.get('mcp-protocol-version', '-')}"
        rec.wire.append(line)
        if args.trace:
            eprint("[py wire]", line)

    async def on_response(response: httpx2.Response) -> None:
        line = f"{rec.now()} <- {response.status_code} {response.headers.get('content-type', '-')} for {response.request.method}"
        if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
            try:
                await response.aread()
                line += " " + response.text[:200]
            except Exception:
                pass
        rec.wire.append(line)
        rec.poke()
        if args.trace:
            eprint("[py wire]", line)

    hooks = {"request": [on_request], "response": [on_response]}
    if args.transport == "sse":

        def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> httpx2.AsyncClient:
            c = create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)
            c.event_hooks = hooks
            return c

        return sse_client(args.url, timeout=args.request_timeout, sse_read_timeout=300.0, httpx_client_factory=factory)

    @asynccontextmanager
    async def streamable() -> Any:
        # A caller-supplied httpx2 client is not closed by the SDK, so own it here.
        async with create_mcp_http_client() as http_client:
            http_client.event_hooks = hooks
            async with streamable_http_client(args.url, http_client=http_client) as streams:
                yield streams

    return streamable()


def connect_info(client: Client, rec: Recorder, args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {"protocol": client.protocol_version, "transport": args.transport, "mode": args.mode}
    if args.mode == "auto" and args.transport == "streamable-http":
        # The wire up to and including the initialize exchange: shows the discover probe and the fallback.
        probe = []
        for line in rec.wire:
            probe.append(line)
            if " initialize " in line or len(probe) >= 8:
                break
        info["connect_wire"] = probe
    return info


async def await_get_stream(rec: Recorder, args: argparse.Namespace, seconds: float = 3.0) -> str | None:
    """streamable-http: wait (bounded) until the SDK's standalone GET stream got its answer.

    Server-everything sends log messages and resources/updated on that stream, and it sends the
    first one at once when toggled on; toggling before the stream is up only costs a 5 s wait, but
    waiting here makes the direct baseline deterministic. Returns the GET's response line, if any.
    """
    if args.transport != "streamable-http":
        return "n/a (sse: single stream)"

    def answered() -> str | None:
        return next((line for line in rec.wire if " <- " in line and " for GET" in line), None)

    line = await rec.wait_for(answered, seconds)
    return line.split(" <- ", 1)[1] if line else None


# ----------------------------------------------------------------------------------------- checks


async def check_tools(client: Client, rec: Recorder, args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    listed = await client.list_tools()
    names = [t.name for t in listed.tools]
    msg = f"hello from py {rec.nonce}"
    result = await client.call_tool(ECHO_TOOL, {"message": msg})
    text = text_of(result)
    ok = bool(names) and ECHO_TOOL in names and not result.is_error and msg in text
    return ok, {"tool_count": len(names), "has_echo": ECHO_TOOL in names, "sent": msg, "got": text, "is_error": result.is_error}


async def check_sampling(client: Client, rec: Recorder, args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    prompt = f"py sampling prompt {rec.nonce}"
    result = await client.call_tool(SAMPLING_TOOL, {"prompt": prompt, "maxTokens": 32})
    text = text_of(result)
    seen_prompt = [
        m.content.text
        for p in rec.sampling
        for m in p.messages
        if isinstance(getattr(m, "content", None), types.TextContent)
    ]
    answered = f"py-sampled-{rec.nonce}"
    ok = (
        not result.is_error
        and len(rec.sampling) == 1
        and any(prompt in t for t in seen_prompt)
        and answered in text
    )
    return ok, {"callback_calls": len(rec.sampling), "request_texts": seen_prompt, "answered": answered, "result": text[:400], "is_error": result.is_error}


async def check_elicitation(client: Client, rec: Recorder, args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    result = await client.call_tool(ELICITATION_TOOL, {})
    text = text_of(result)
    answered = f"py-elicited-{rec.nonce}"
    ok = not result.is_error and len(rec.elicitation) == 1 and answered in text and "Favorite Integer: 7" in text
    msg = getattr(rec.elicitation[0], "message", None) if rec.elicitation else None
    return ok, {"callback_calls": len(rec.elicitation), "request_message": msg, "answered": answered, "result": text[:400], "is_error": result.is_error}


async def check_progress(client: Client, rec: Recorder, args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    steps, duration = 3, 3
    seen: list[tuple[float, float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((rec.now(), progress, total))

    t = time.monotonic()
    result = await client.call_tool(PROGRESS_TOOL, {"duration": duration, "steps": steps}, progress_callback=on_progress)
    elapsed = round(time.monotonic() - t, 2)
    text = text_of(result)
    values = [p for _, p, _ in seen]
    increasing = all(b > a for a, b in zip(values, values[1:]))
    ok = (
        not result.is_error
        and len(values) >= 1
        and increasing
        and f"Steps: {steps}" in text
        and all(tot == steps for _, _, tot in seen)
    )
    return ok, {"progress": [{"t": a, "progress": b, "total": c} for a, b, c in seen], "expected_steps": steps, "increasing": increasing, "elapsed_s": elapsed, "result": text}


async def check_logging(client: Client, rec: Recorder, args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    level = args.log_level
    floor = LEVELS.index(level)
    get_stream = await await_get_stream(rec, args)
    await client.set_logging_level(level)
    t_set = rec.now()
    started = await client.call_tool(LOGGING_TOOL, {})
    started_text = text_of(started)
    def at_or_above() -> list[Any]:
        return [p for _, p in rec.logs if LEVELS.index(p.level) >= floor]

    await rec.wait_for(at_or_above, args.wait)
    waited = round(rec.now() - t_set, 2)
    stopped = await client.call_tool(LOGGING_TOOL, {})
    stopped_text = text_of(stopped)
    below = [p.level for _, p in rec.logs if LEVELS.index(p.level) < floor]
    good = at_or_above()
    ok = "Started" in started_text and len(good) >= 1 and not below and "Stopped" in stopped_text
    return ok, {
        "level": level,
        "get_stream": get_stream,
        "received": [{"t": t, "level": p.level, "data": str(p.data)[:100]} for t, p in rec.logs],
        "below_level": below,
        "waited_s": waited,
        "toggle_on": started_text[:80],
        "toggle_off": stopped_text[:80],
    }


async def check_subscribe(client: Client, rec: Recorder, args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    resources = await client.list_resources()
    if not resources.resources:
        return False, {"error": "resources/list returned no resources"}
    uri = str(resources.resources[0].uri)
    get_stream = await await_get_stream(rec, args)
    await client.subscribe_resource(uri)
    t_sub = rec.now()
    started = await client.call_tool(SUBSCRIBE_TOOL, {})
    started_text = text_of(started)

    def updates() -> list[tuple[float, str]]:
        return [
            (t, str(n.params.uri))
            for t, n in rec.notifications
            if isinstance(n, types.ResourceUpdatedNotification)
        ]

    await rec.wait_for(lambda: [u for u in updates() if u[1] == uri], args.wait)
    got = updates()
    stopped = await client.call_tool(SUBSCRIBE_TOOL, {})
    await client.unsubscribe_resource(uri)
    matching = [t for t, u in got if u == uri]
    ok = "Started" in started_text and len(matching) >= 1 and "Stopped" in text_of(stopped)
    return ok, {
        "uri": uri,
        "get_stream": get_stream,
        "updates": [{"t": t, "uri": u} for t, u in got],
        "first_update_after_s": round(matching[0] - t_sub, 2) if matching else None,
        "toggle_on": started_text[:80],
    }


CHECKS: dict[str, Callable[[Client, Recorder, argparse.Namespace], Awaitable[tuple[bool, dict[str, Any]]]]] = {
    "tools": check_tools,
    "sampling": check_sampling,
    "elicitation": check_elicitation,
    "progress": check_progress,
    "logging": check_logging,
    "subscribe": check_subscribe,
}


def exc_text(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return f"{type(e).__name__}: " + "; ".join(exc_text(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


async def run_check(name: str, args: argparse.Namespace) -> tuple[bool, Any]:
    rec = Recorder()
    detail: dict[str, Any] = {}
    stage = "connect"
    try:
        with anyio.fail_after(args.check_timeout):
            client = Client(
                make_transport(args, rec),
                mode=args.mode,
                read_timeout_seconds=args.request_timeout,
                client_info=types.Implementation(name="tether-py-driver", version="0.1.0"),
                **make_callbacks(rec),
            )
            async with client:
                detail.update(connect_info(client, rec, args))
                stage = "check"
                ok, d = await CHECKS[name](client, rec, args)
                detail.update(d)
                stage = "close"
        if rec.transport_errors:
            detail["transport_errors"] = rec.transport_errors[:5]
        return ok, detail
    except TimeoutError:
        detail.update({"error": f"timeout: no completion within {args.check_timeout}s (hang) during {stage}"})
    except Exception as e:  # noqa: BLE001 - every failure is a reported result
        detail.update({"error": exc_text(e), "stage": stage})
    if rec.transport_errors:
        detail["transport_errors"] = rec.transport_errors[:5]
    detail["wire_tail"] = rec.wire[-8:]
    return False, detail


def emit(check: str, ok: bool, detail: Any) -> None:
    print(json.dumps({"check": check, "ok": ok, "detail": detail}, default=str), flush=True)


async def amain(args: argparse.Namespace, names: list[str]) -> int:
    passed = failed = 0
    for name in names:
        ok, detail = await run_check(name, args)
        emit(name, ok, detail)
        if ok:
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="server endpoint (…/mcp for streamable-http, …/sse for sse)")
    ap.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    ap.add_argument("--mode", choices=["legacy", "auto"], default="legacy",
                    help="version negotiation: legacy = initialize handshake; auto = server/discover probe, then fall back")
    ap.add_argument("--checks", default=",".join(ALL_CHECKS), help=f"comma-separated subset of {','.join(ALL_CHECKS)}")
    ap.add_argument("--log-level", default="info", choices=LEVELS, help="level for the logging check (default info)")
    ap.add_argument("--wait", type=float, default=20.0, help="bound for waiting on logging/resource notifications (s)")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="per-request read timeout (s)")
    ap.add_argument("--check-timeout", type=float, default=60.0, help="deadline for one whole check incl. connect/close (s)")
    ap.add_argument("--trace", action="store_true", help="print the HTTP exchanges to stderr")
    ap.add_argument("--debug", action="store_true", help="SDK debug logging to stderr")
    args = ap.parse_args()
    names = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in names if c not in CHECKS]
    if unknown or not names:
        ap.error(f"unknown checks {unknown}; known: {ALL_CHECKS}")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.CRITICAL, stream=sys.stderr)

    # Last-resort watchdog: if the event loop itself wedges, the deadlines above cannot fire.
    budget = len(names) * (args.check_timeout + 10) + 15

    def watchdog() -> None:
        time.sleep(budget)
        print(json.dumps({"check": "watchdog", "ok": False, "detail": f"driver exceeded {budget}s overall; killed"}), flush=True)
        print("0 passed, 1 failed", flush=True)
        os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    sys.exit(anyio.run(amain, args, names))


if __name__ == "__main__":
    main()
