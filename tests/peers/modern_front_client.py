#!/usr/bin/env python3
"""Client driver: the official Python MCP SDK (`mcp==2.3.0`) as a client of `tether serve`, in
2026-07-28, `auto` or `legacy` (handshake-era) mode, in front of an upstream of either era.

    .peers/venv/bin/python tests/peers/modern_front_client.py --url URL \
        --mode 2026-07-28|auto|legacy --upstream everything|fixture|modern

`--upstream` names what is behind tether, which picks the tools each step uses:
  everything  server-everything (handshake era only): echo, trigger-elicitation-request,
              toggle-subscriber-updates, trigger-long-running-operation, toggle-simulated-logging
  fixture     tests/peers/fixture-v2.mjs with FIXTURE_EXTRAS=1 (both eras): test_simple_text,
              test_input_required_result_elicitation, test_logging_tool, tether_bump,
              tether_slow
  modern      tests/peers/modern_server.py (2026-07-28 only): echo, greet, log_levels, bump, slow

Steps: the negotiated revision (2026-07-28 for `2026-07-28` and `auto`: no downgrade; a
handshake-era one for `legacy`); list and call tools; an elicitation round trip (an
`input_required` result, or a server->client request in legacy mode: the SDK answers either);
the log level (per-request `logLevel` in `_meta` when modern, `logging/setLevel` in legacy mode);
a resource update for a subscribed URI (`subscriptions/listen` when modern, `resources/subscribe`
in legacy mode); then kill points where the harness kills the upstream: `between` (nothing in
flight: the next call succeeds on a revived upstream) and `during` (a read-only, idempotent slow
call in flight: it is retried and succeeds). The driver prints `{"event": "kill-point", "name":
N}` and waits for `go`.

Output: one JSON line per check `{"check", "ok", "detail"}`, `{"skip", "reason"}` for a check
this upstream cannot be asked or a `--known-gap NAME` check that failed (never counted as passed;
a known gap that passes is a failure), then `N passed, N failed`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from mcp import Client

warnings.filterwarnings("ignore")

MODERN = "2026-07-28"
LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]


@dataclass(frozen=True)
class Upstream:
    """What each step asks of one upstream."""

    call: tuple[str, Callable[[str], dict[str, Any]], Callable[[str, str], bool]]
    elicit: str
    elicit_content: Callable[[str], dict[str, Any]]
    elicit_expect: Callable[[str], str]
    long: tuple[str, dict[str, Any]]
    # The URI to watch, and the tool that changes it (`toggle` tools are called again after).
    resource: str
    bump: str
    toggles: bool
    # The tool that logs, the level to ask for, the messages expected at it; None = connection
    # logs only (server-everything's simulated logging), which a modern request cannot opt into.
    log: tuple[str, str, Callable[[list[str]], bool]] | None


UPSTREAMS = {
    "everything": Upstream(
        call=("echo", lambda n: {"message": f"hi-{n}"}, lambda n, t: n in t),
        elicit="trigger-elicitation-request",
        elicit_content=lambda n: {"name": f"py-{n}", "check": True},
        elicit_expect=lambda n: f"py-{n}",
        long=("trigger-long-running-operation", {"duration": 3, "steps": 3}),
        resource="demo://resource/static/document/architecture.md",
        bump="toggle-subscriber-updates",
        toggles=True,
        log=None,
    ),
    "fixture": Upstream(
        call=("test_simple_text", lambda n: {}, lambda n, t: "simple text response" in t),
        elicit="test_input_required_result_elicitation",
        elicit_content=lambda n: {"name": f"py-{n}"},
        elicit_expect=lambda n: f"Hello, py-{n}!",
        long=("tether_slow", {"seconds": 3}),
        resource="test://static-text",
        bump="tether_bump",
        toggles=False,
        # The tool logs twice at info: both arrive at `info`, none at `error`.
        log=("test_logging_tool", "info", lambda got: len(got) == 2 and all("Tool execution" in g for g in got)),
    ),
    "modern": Upstream(
        call=("echo", lambda n: {"message": f"hi-{n}"}, lambda n, t: n in t),
        elicit="greet",
        elicit_content=lambda n: {"name": f"py-{n}"},
        elicit_expect=lambda n: f"Hello, py-{n}!",
        long=("slow", {"seconds": 3}),
        resource="test://counter",
        bump="bump",
        toggles=False,
        # The tool logs at debug, info, warning and error: `warning` lets the last two through.
        log=("log_levels", "warning", lambda got: sorted(got) == ["at error", "at warning"]),
    ),
}


def text_of(r: types.CallToolResult) -> str:
    return " ".join(getattr(x, "text", "") for x in r.content)


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.up = UPSTREAMS[args.upstream]
        self.legacy = args.mode == "legacy"
        self.passed = 0
        self.failed = 0
        self.nonce = uuid.uuid4().hex[:8]
        self.elicited: list[Any] = []
        self.logs: list[Any] = []
        self.notes: list[Any] = []
        self.stdin = anyio.wrap_file(sys.stdin)

    def record(self, name: str, ok: bool, detail: Any) -> None:
        print(json.dumps({"check": name, "ok": ok, "detail": detail}, default=str), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    def skip(self, name: str, reason: str) -> None:
        print(json.dumps({"skip": name, "reason": reason}), flush=True)

    async def step(self, name: str, fn: Any) -> None:
        try:
            with anyio.fail_after(self.args.step_timeout):
                ok, detail = await fn()
        except Exception as e:  # noqa: BLE001 - every failure is a reported result
            ok, detail = False, f"{type(e).__name__}: {e}"
        if name.split(":", 1)[-1] in self.args.known_gap:
            # A listed gap is reported as such while it fails, and fails the run once it passes,
            # so that the list cannot outlive the bug.
            if ok:
                self.record(name, False, f"listed with --known-gap but passed, take it off: {detail}")
            else:
                self.skip(name, f"known gap: {json.dumps(detail, default=str)[:300]}")
            return
        self.record(name, ok, detail)

    async def kill_point(self, name: str) -> None:
        print(json.dumps({"event": "kill-point", "name": name}), flush=True)
        with anyio.fail_after(self.args.kill_timeout):
            line = await self.stdin.readline()
        if line.strip() != "go":
            raise RuntimeError(f"expected `go` after kill point {name}, got {line!r}")

    async def wait_until(self, pred: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not pred() and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        return pred()

    def updates(self, uri: str) -> list[Any]:
        out = []
        for n in self.notes:
            root = getattr(n, "root", n)
            if getattr(root, "method", None) == "notifications/resources/updated" and str(root.params.uri) == uri:
                out.append(root)
        return out

    async def run(self) -> None:
        up = self.up

        async def elicitation_callback(ctx: Any, params: Any) -> Any:
            self.elicited.append(params)
            return types.ElicitResult(action="accept", content=up.elicit_content(self.nonce))

        async def logging_callback(params: types.LoggingMessageNotificationParams) -> None:
            self.logs.append(params)

        async def message_handler(message: Any) -> None:
            if not isinstance(message, Exception):
                self.notes.append(message)

        client = Client(
            self.args.url,
            mode=self.args.mode,
            read_timeout_seconds=self.args.request_timeout,
            client_info=types.Implementation(name="tether-modern-front-driver", version="0.1.0"),
            elicitation_callback=elicitation_callback,
            logging_callback=logging_callback,
            message_handler=message_handler,
        )
        async with client:
            c = client

            async def version() -> tuple[bool, Any]:
                v = c.protocol_version
                return (v != MODERN if self.legacy else v == MODERN), v

            async def tools() -> tuple[bool, Any]:
                names = [t.name for t in (await c.list_tools()).tools]
                return all(t in names for t in (up.call[0], up.elicit, up.long[0], up.bump)), names

            async def call() -> tuple[bool, Any]:
                name, args, good = up.call
                r = await c.call_tool(name, args(self.nonce))
                text = text_of(r)
                return (not r.is_error) and good(self.nonce, text), text[:200]

            async def elicit() -> tuple[bool, Any]:
                before = len(self.elicited)
                r = await c.call_tool(up.elicit, {})
                text = text_of(r)
                ok = len(self.elicited) == before + 1 and up.elicit_expect(self.nonce) in text and not r.is_error
                return ok, text[:300]

            async def log_level() -> tuple[bool, Any]:
                assert up.log is not None
                tool, level, good = up.log
                detail: dict[str, Any] = {}
                for asked, expect_some in ((level, True), ("emergency", False)):
                    self.logs.clear()
                    if self.legacy:
                        await c.set_logging_level(asked)  # type: ignore[arg-type]
                        r = await c.call_tool(tool, {})
                    else:
                        r = await c.call_tool(tool, {}, meta={LOG_LEVEL_KEY: asked})
                    if expect_some:
                        # Handshake-era logs may trail the result on another stream.
                        await self.wait_until(lambda: good([str(p.data) for p in self.logs]), 5)
                    got = [str(p.data) for p in self.logs]
                    detail[asked] = {"result": text_of(r)[:80], "logs": got}
                    if r.is_error or not (good(got) if expect_some else not got):
                        return False, detail
                return True, detail

            async def connection_logs_legacy() -> tuple[bool, Any]:
                # server-everything logs on the session (not per request): handshake era only.
                await c.set_logging_level("debug")
                self.logs.clear()
                on = text_of(await c.call_tool("toggle-simulated-logging", {}))
                await self.wait_until(lambda: self.logs, 15)
                off = text_of(await c.call_tool("toggle-simulated-logging", {}))
                return bool(self.logs) and "Started" in on and "Stopped" in off, {"logs": len(self.logs)}

            async def bump() -> None:
                await c.call_tool(up.bump, {})

            async def subscription() -> tuple[bool, Any]:
                uri = up.resource
                if self.legacy:
                    self.notes.clear()
                    await c.subscribe_resource(uri)
                    try:
                        await bump()
                        seen = await self.wait_until(lambda: self.updates(uri), 15)
                    finally:
                        if up.toggles:
                            await bump()
                        await c.unsubscribe_resource(uri)
                    return bool(seen), {"via": "resources/subscribe", "updates": len(seen)}
                async with c.listen(resource_subscriptions=[uri]) as sub:
                    honored = sub.honored
                    await bump()
                    seen = None
                    try:
                        with anyio.fail_after(15):
                            async for event in sub:
                                seen = event
                                if uri in str(event):
                                    break
                    finally:
                        if up.toggles:
                            await bump()
                return seen is not None and uri in str(seen), {"honored": str(honored), "event": str(seen)}

            async def long_call() -> tuple[bool, Any]:
                r = await c.call_tool(*up.long)
                return not r.is_error, text_of(r)[:200]

            tag = "legacy" if self.legacy else "modern"
            await self.step(f"{tag}:version", version)
            await self.step(f"{tag}:list", tools)
            await self.step(f"{tag}:call", call)
            await self.step(f"{tag}:elicitation", elicit)
            if up.log is not None:
                await self.step(f"{tag}:log-level", log_level)
            elif self.legacy:
                await self.step(f"{tag}:log-level", connection_logs_legacy)
            else:
                self.skip(
                    f"{tag}:log-level",
                    "server-everything logs on the session, not per request: a 2026-07-28 request has "
                    "nothing to opt into",
                )
            await self.step(f"{tag}:resource-updated", subscription)
            await self.kill_point("between")
            await self.step("between:next-call", call)
            async with anyio.create_task_group() as tg:
                results: dict[str, Any] = {}

                async def in_flight() -> None:
                    try:
                        with anyio.fail_after(self.args.step_timeout):
                            results["r"] = await long_call()
                    except Exception as e:  # noqa: BLE001
                        results["r"] = (False, f"{type(e).__name__}: {e}")

                tg.start_soon(in_flight)
                await anyio.sleep(1.0)
                await self.kill_point("during")
            self.record("during:in-flight", *results.get("r", (False, "no result")))
            await self.step("during:next-call", call)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--mode", default="2026-07-28", choices=["2026-07-28", "auto", "legacy"])
    ap.add_argument("--upstream", default="everything", choices=sorted(UPSTREAMS))
    ap.add_argument("--known-gap", action="append", default=[], help="a check (name after the colon) known to fail")
    ap.add_argument("--request-timeout", type=float, default=30)
    ap.add_argument("--step-timeout", type=float, default=60)
    ap.add_argument("--kill-timeout", type=float, default=90)
    ap.add_argument("--scenario-timeout", type=float, default=240)
    args = ap.parse_args()
    d = Driver(args)

    async def go() -> None:
        try:
            with anyio.fail_after(args.scenario_timeout):
                await d.run()
        except Exception as e:  # noqa: BLE001
            d.record("session", False, f"{type(e).__name__}: {e}")

    anyio.run(go)
    print(f"{d.passed} passed, {d.failed} failed", flush=True)
    sys.exit(0 if d.failed == 0 else 1)


if __name__ == "__main__":
    main()
