#!/usr/bin/env python3
"""Client driver: the official Python MCP SDK (`mcp==2.3.0`) over stdio to `tether bridge`, or
over Streamable HTTP to `tether serve`, in front of the modern-only (2026-07-28)
`tests/peers/modern_server.py`.

    .peers/venv/bin/python tests/peers/modern_bridge_client.py --command "<tether> bridge URL …"
    .peers/venv/bin/python tests/peers/modern_bridge_client.py --url http://127.0.0.1:PORT/mcp

With `--command` the SDK spawns the bridge, as a desktop client would; with `--url` it is an HTTP
client of `tether serve --upstream <modern server>`. Either way it speaks the handshake era
(`mode="legacy"`: `initialize`, `logging/setLevel`, `resources/subscribe`, server→client
elicitation); tether must translate all of it to 2026-07-28. ONE session throughout,
while the harness kills and restarts the remote at kill points: the driver prints
`{"event": "kill-point", "name": NAME}` and waits for a line `go` on stdin. Kill points:
  between        nothing in flight; the harness restarts the remote, then writes `go`
  during         a safe call (`slow`, readOnly/idempotent) in flight: it must succeed
  during-unsafe  an unsafe call (`slow_unsafe`) in flight: it must end with -32011,
                 data.reason "upstream_restarted"
  down           the harness writes `go` at once and restarts the remote ~1.5 s later: the call
                 made right after `go` must complete once the remote is back

Output: one JSON object per check `{"check": NAME, "ok": BOOL, "detail": …}`, then
`N passed, N failed`; exit 0 when all passed. Every step has a deadline; a watchdog thread ends
the process if the event loop wedges.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

warnings.filterwarnings("ignore", category=DeprecationWarning)
try:
    from mcp import MCPDeprecationWarning

    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
except ImportError:  # pragma: no cover
    pass

LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
POINTS = ["between", "during", "during-unsafe", "down"]


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.passed = 0
        self.failed = 0
        self.nonce = uuid.uuid4().hex[:8]
        self.logs: list[types.LoggingMessageNotificationParams] = []
        self.notes: list[Any] = []
        self.elicited: list[Any] = []
        self.errors: list[str] = []
        self.stdin = anyio.wrap_file(sys.stdin)
        self.client: Client | None = None

    # -- output and kill points
    def record(self, name: str, ok: bool, detail: Any) -> None:
        print(json.dumps({"check": name, "ok": ok, "detail": detail}, default=str), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    async def step(self, name: str, fn: Callable[[], Awaitable[tuple[bool, Any]]]) -> bool:
        try:
            with anyio.fail_after(self.args.step_timeout):
                ok, detail = await fn()
        except TimeoutError:
            ok, detail = False, f"timeout after {self.args.step_timeout}s"
        except Exception as e:  # noqa: BLE001 - every failure is a reported result
            ok, detail = False, f"{type(e).__name__}: {e}"
        self.record(name, ok, detail)
        return ok

    async def kill_point(self, name: str) -> None:
        print(json.dumps({"event": "kill-point", "name": name}), flush=True)
        with anyio.fail_after(self.args.kill_timeout):
            while True:
                line = await self.stdin.readline()
                if not line or line.strip() == "go":
                    return

    # -- callbacks
    async def elicitation(self, ctx: Any, params: Any) -> Any:
        self.elicited.append(params)
        return types.ElicitResult(action="accept", content={"name": f"py-{self.nonce}"})

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def messages(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.errors.append(repr(message))
        else:
            self.notes.append(message)

    def updates(self, uri: str) -> list[Any]:
        out = []
        for n in self.notes:
            root = getattr(n, "root", n)
            if getattr(root, "method", None) == "notifications/resources/updated" and str(root.params.uri) == uri:
                out.append(root)
        return out

    async def wait_until(self, pred: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not (v := pred()) and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        return pred()

    # -- steps
    @property
    def c(self) -> Client:
        assert self.client is not None
        return self.client

    async def echo(self) -> tuple[bool, Any]:
        msg = f"modern {self.nonce} {uuid.uuid4().hex[:4]}"
        t = time.monotonic()
        r = await self.c.call_tool("echo", {"message": msg})
        text = text_of(r)
        return text == f"Echo: {msg}" and not r.is_error, {"text": text, "elapsed_s": round(time.monotonic() - t, 2)}

    async def connect(self) -> tuple[bool, Any]:
        info = self.c.server_info
        ok = (
            info is not None
            and info.name == "modern-test-server"
            and self.c.instructions == "A modern-only test server for tether."
            and self.c.protocol_version in ("2025-11-25", "2025-06-18")
        )
        return ok, {"server_info": str(info), "protocol": self.c.protocol_version, "instructions": self.c.instructions}

    async def tools(self) -> tuple[bool, Any]:
        listed = await self.c.list_tools()
        names = sorted(t.name for t in listed.tools)
        deploy = next((t for t in listed.tools if t.name == "deploy"), None)
        header = deploy is not None and deploy.input_schema["properties"]["region"].get("x-mcp-header") == "Region"
        want = {"echo", "deploy", "slow", "slow_unsafe", "log_levels", "greet", "bump"}
        return want <= set(names) and header, {"tools": names, "x_mcp_header_kept": header}

    async def deploy(self) -> tuple[bool, Any]:
        out = {}
        for region in ("eu-west-1", "zürich ", "=?base64?x?="):
            r = await self.c.call_tool("deploy", {"region": region, "version": "7"})
            out[region] = text_of(r)
            if r.is_error or out[region] != f"deployed 7 to {region}":
                return False, out
        return True, out

    async def read(self) -> tuple[bool, Any]:
        r = await self.c.read_resource("test://static")
        text = r.contents[0].text if r.contents and hasattr(r.contents[0], "text") else None
        return text == "static text", {"text": text}

    async def log_level(self) -> tuple[bool, Any]:
        mark = len(self.logs)
        r = await self.c.call_tool("log_levels", {})
        got = await self.wait_until(lambda: [str(p.level) for p in self.logs[mark:]], 2.0)
        await anyio.sleep(0.3)
        got = [str(p.level) for p in self.logs[mark:]]
        below = [lv for lv in got if LEVELS.index(lv) < LEVELS.index("warning")]
        ok = text_of(r) == "logged" and "warning" in got and "error" in got and not below
        return ok, {"levels": got}

    async def subscription(self) -> tuple[bool, Any]:
        mark = len(self.updates("test://counter"))
        r = await self.c.call_tool("bump", {})
        got = await self.wait_until(lambda: len(self.updates("test://counter")) > mark, self.args.wait)
        return bool(got) and text_of(r).startswith("count "), {"bump": text_of(r), "update_arrived": bool(got)}

    async def greet(self) -> tuple[bool, Any]:
        r = await self.c.call_tool("greet", {})
        text = text_of(r)
        return text == f"Hello, py-{self.nonce}!" and len(self.elicited) >= 1, {"text": text, "asked": len(self.elicited)}

    async def in_flight(self, point: str, tool: str, expect_ok: bool) -> tuple[bool, Any]:
        started = anyio.Event()
        result: dict[str, Any] = {}

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            started.set()

        async def call() -> None:
            try:
                r = await self.c.call_tool(tool, {"seconds": 3}, progress_callback=on_progress)
                result["text"] = text_of(r)
                result["is_error"] = r.is_error
            except MCPError as e:
                result["error"] = {"code": e.error.code, "message": e.error.message, "data": e.error.data}
            finally:
                started.set()

        t = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await started.wait()
            await self.kill_point(point)
        result["elapsed_s"] = round(time.monotonic() - t, 2)
        if expect_ok:
            return result.get("text") == "slow done" and not result.get("is_error"), result
        err = result.get("error") or {}
        data = err.get("data") or {}
        return err.get("code") == -32011 and data.get("reason") == "upstream_restarted", result

    async def run(self) -> None:
        await self.step("connect", self.connect)
        await self.step("tools", self.tools)
        await self.step("echo", self.echo)
        await self.step("x-mcp-header", self.deploy)
        await self.step("resources-read", self.read)
        await self.step("set-level", lambda: self.ok_after(self.c.set_logging_level("warning")))
        await self.step("log-level", self.log_level)
        await self.step("subscribe", lambda: self.ok_after(self.c.subscribe_resource("test://counter")))
        await self.step("subscription", self.subscription)
        await self.step("elicitation", self.greet)

        await self.kill_point("between")
        await self.step("between:echo", self.echo)
        await self.step("between:log-level", self.log_level)
        await self.step("between:subscription", self.subscription)
        await self.step("between:x-mcp-header", self.deploy)
        await self.step("between:elicitation", self.greet)

        await self.step("during:safe-call", lambda: self.in_flight("during", "slow", True))
        await self.step("during:echo", self.echo)
        await self.step("during-unsafe:call", lambda: self.in_flight("during-unsafe", "slow_unsafe", False))
        await self.step("during-unsafe:echo", self.echo)

        await self.kill_point("down")

        async def while_down() -> tuple[bool, Any]:
            ok, d = await self.echo()
            d["waited_for_the_remote"] = d["elapsed_s"] >= 1.0
            return ok and d["waited_for_the_remote"], d

        await self.step("down:call-while-down", while_down)
        await self.step("down:read", self.read)
        await self.step("down:subscription", self.subscription)

        async def clean() -> tuple[bool, Any]:
            await self.c.send_ping()
            return not self.errors, {"transport_errors": self.errors[:5]}

        await self.step("transport-clean", clean)

    async def ok_after(self, aw: Awaitable[Any]) -> tuple[bool, Any]:
        await aw
        return True, None


def text_of(r: types.CallToolResult) -> str:
    return "\n".join(c.text for c in r.content if isinstance(c, types.TextContent))


async def amain(args: argparse.Namespace) -> int:
    d = Driver(args)
    if args.url:
        server: Any = args.url
    else:
        argv = shlex.split(args.command)
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
        server = stdio_client(params, errlog=sys.stderr)
    client = Client(
        server,
        mode="legacy",
        read_timeout_seconds=args.request_timeout,
        client_info=types.Implementation(name="tether-modern-driver", version="0.1.0"),
        elicitation_callback=d.elicitation,
        logging_callback=d.logging,
        message_handler=d.messages,
    )
    try:
        with anyio.fail_after(args.scenario_timeout):
            async with client:
                d.client = client
                await d.run()
    except TimeoutError:
        d.record("scenario", False, f"the scenario did not finish within {args.scenario_timeout}s")
    except Exception as e:  # noqa: BLE001
        d.record("scenario", False, f"{type(e).__name__}: {e}")
    print(f"{d.passed} passed, {d.failed} failed", flush=True)
    return 0 if d.failed == 0 else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--command", help="the bridge command line, split like a shell would")
    how.add_argument("--url", help="the MCP endpoint of `tether serve` (Streamable HTTP)")
    ap.add_argument("--request-timeout", type=float, default=30.0)
    ap.add_argument("--step-timeout", type=float, default=60.0)
    ap.add_argument("--kill-timeout", type=float, default=90.0)
    ap.add_argument("--scenario-timeout", type=float, default=240.0)
    ap.add_argument("--wait", type=float, default=10.0, help="bound for waiting on a notification (s)")
    args = ap.parse_args()

    def watchdog() -> None:
        time.sleep(args.scenario_timeout + 30)
        print(json.dumps({"check": "watchdog", "ok": False, "detail": "driver wedged; killed"}), flush=True)
        print("0 passed, 1 failed", flush=True)
        os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    sys.exit(anyio.run(amain, args))


if __name__ == "__main__":
    main()
