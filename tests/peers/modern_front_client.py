#!/usr/bin/env python3
"""Client driver: the official Python MCP SDK (`mcp==2.3.0`) as a 2026-07-28 client of
`tether serve`, whose upstream is handshake-era only (server-everything over stdio).

    .peers/venv/bin/python tests/peers/modern_front_client.py --url URL --mode 2026-07-28|auto

Steps: the negotiated revision must be 2026-07-28 (no downgrade, also for `auto`); list and call
tools; an elicitation round trip (the upstream's `elicitation/create` reaches this client as an
`input_required` result, which the SDK answers and retries); a `subscriptions/listen` stream that
carries `notifications/resources/updated` for a subscribed URI; then kill points where the
harness SIGKILLs the stdio child: `between` (nothing in flight: the next call succeeds on a revived
upstream) and `during` (`trigger-long-running-operation`, read-only + idempotent, in flight: it is
retried and succeeds). The driver prints `{"event": "kill-point", "name": N}` and waits for `go`.

Output: one JSON line per check `{"check", "ok", "detail"}`, then `N passed, N failed`.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
import warnings
from typing import Any

import anyio
import mcp_types as types
from mcp import Client

warnings.filterwarnings("ignore")

EVERYTHING_URI = "demo://resource/static/document/architecture.md"


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.passed = 0
        self.failed = 0
        self.nonce = uuid.uuid4().hex[:8]
        self.elicited: list[Any] = []
        self.stdin = anyio.wrap_file(sys.stdin)

    def record(self, name: str, ok: bool, detail: Any) -> None:
        print(json.dumps({"check": name, "ok": ok, "detail": detail}, default=str), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    async def step(self, name: str, fn: Any) -> None:
        try:
            with anyio.fail_after(self.args.step_timeout):
                ok, detail = await fn()
        except Exception as e:  # noqa: BLE001 - every failure is a reported result
            ok, detail = False, f"{type(e).__name__}: {e}"
        self.record(name, ok, detail)

    async def kill_point(self, name: str) -> None:
        print(json.dumps({"event": "kill-point", "name": name}), flush=True)
        with anyio.fail_after(self.args.kill_timeout):
            line = await self.stdin.readline()
        if line.strip() != "go":
            raise RuntimeError(f"expected `go` after kill point {name}, got {line!r}")

    async def run(self) -> None:
        async def elicitation_callback(ctx: Any, params: Any) -> Any:
            self.elicited.append(params)
            return types.ElicitResult(action="accept", content={"name": f"py-{self.nonce}", "check": True})

        client = Client(
            self.args.url,
            mode=self.args.mode,
            read_timeout_seconds=self.args.request_timeout,
            client_info=types.Implementation(name="tether-modern-front-driver", version="0.1.0"),
            elicitation_callback=elicitation_callback,
        )
        async with client:
            c = client

            async def version() -> tuple[bool, Any]:
                return c.protocol_version == "2026-07-28", c.protocol_version

            async def tools() -> tuple[bool, Any]:
                names = [t.name for t in (await c.list_tools()).tools]
                return "echo" in names and "trigger-elicitation-request" in names, names

            async def echo() -> tuple[bool, Any]:
                r = await c.call_tool("echo", {"message": f"hi-{self.nonce}"})
                text = " ".join(getattr(x, "text", "") for x in r.content)
                return (not r.is_error) and self.nonce in text, text

            async def elicit() -> tuple[bool, Any]:
                r = await c.call_tool("trigger-elicitation-request", {})
                text = " ".join(getattr(x, "text", "") for x in r.content)
                return len(self.elicited) == 1 and f"py-{self.nonce}" in text and not r.is_error, text[:300]

            async def subscription() -> tuple[bool, Any]:
                async with c.listen(resource_subscriptions=[EVERYTHING_URI]) as sub:
                    honored = sub.honored
                    await c.call_tool("toggle-subscriber-updates", {})
                    seen = None
                    try:
                        with anyio.fail_after(15):
                            async for event in sub:
                                seen = event
                                if EVERYTHING_URI in str(event):
                                    break
                    finally:
                        await c.call_tool("toggle-subscriber-updates", {})
                return seen is not None and EVERYTHING_URI in str(seen), {"honored": str(honored), "event": str(seen)}

            async def long_call() -> tuple[bool, Any]:
                r = await c.call_tool("trigger-long-running-operation", {"duration": 3, "steps": 3})
                text = " ".join(getattr(x, "text", "") for x in r.content)
                return not r.is_error, text[:200]

            await self.step("modern:version", version)
            await self.step("modern:list", tools)
            await self.step("modern:call", echo)
            await self.step("modern:elicitation-input-required", elicit)
            await self.step("modern:listen-resource-updated", subscription)
            await self.kill_point("between")
            await self.step("between:next-call", echo)
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
            await self.step("during:next-call", echo)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--mode", default="2026-07-28")
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
