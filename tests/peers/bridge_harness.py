#!/usr/bin/env python3
"""Conformance "client under test" for `tether bridge`: the official Python MCP SDK (mcp==2.3.0)
spawns the bridge and drives MCP over its stdio, the way the conformance suite's client scenario
expects.

The conformance suite (client mode) starts a scenario server and runs this command with the
server's URL appended as the LAST argument, and the scenario's name in MCP_CONFORMANCE_SCENARIO:

    node …/conformance/dist/index.js client --scenario tools_call \
        --command ".peers/venv/bin/python tests/peers/bridge_harness.py --tether target/debug/tether --log-file F"

This script spawns `<tether> bridge <URL> [--log-file F] [--bridge-arg A …]` with the SDK's stdio
client (as a desktop client would), initializes (the SDK's initialize handshake with the client's
own params, which the bridge forwards), lists the tools and then does what the scenario's server
asks for:

  initialize   nothing more (the server checks the initialize params it got through the bridge);
  tools_call   calls `add_numbers` {a: 5, b: 3}; the result must say 8;
  sse-retry    calls `test_reconnection`: the server closes that call's SSE stream after a priming
               event with `retry: 500`, and answers on the GET stream the bridge must reopen with
               Last-Event-ID after 500 ms; the result must be "Reconnection test completed
               successfully";
  other        calls every listed tool with arguments made from its input schema.

Output: one JSON line per step on stdout ({"step": …, "ok": …, "detail": …}) and a final
`N passed, N failed`; exit 0 when every step passed. The bridge's own logs go to --log-file (or to
this process's stderr). Every step has a deadline, and the whole run --deadline (default 45 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

warnings.filterwarnings("ignore", category=DeprecationWarning)


def emit(step: str, ok: bool, detail: Any) -> None:
    print(json.dumps({"step": step, "ok": ok, "detail": detail}, default=str), flush=True)


def exc_text(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return f"{type(e).__name__}: " + "; ".join(exc_text(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def sample_arguments(tool: Any) -> dict[str, Any]:
    """Arguments for a tool from its input schema: defaults, else a plain value per type."""
    schema = getattr(tool, "input_schema", None) or {}
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    out: dict[str, Any] = {}
    for i, (name, p) in enumerate(props.items()):
        if not isinstance(p, dict):
            continue
        if "default" in p:
            out[name] = p["default"]
            continue
        t = p.get("type")
        out[name] = {"number": i + 1, "integer": i + 1, "boolean": True, "array": [], "object": {}}.get(t, f"value-{name}")
    return out


async def run(args: argparse.Namespace) -> int:
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    bridge = [args.url]
    if args.log_file:
        bridge += ["--log-file", args.log_file]
    bridge += args.bridge_arg
    params = StdioServerParameters(command=args.tether, args=["bridge", *bridge], env=dict(os.environ))
    passed = failed = 0

    def record(step: str, ok: bool, detail: Any) -> None:
        nonlocal passed, failed
        emit(step, ok, detail)
        if ok:
            passed += 1
        else:
            failed += 1

    async def call(client: Client, name: str, arguments: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
        t = time.monotonic()
        try:
            with anyio.fail_after(args.step_timeout):
                result = await client.call_tool(name, arguments)
        except MCPError as e:
            return False, "", {"mcp_error": {"code": e.code, "message": e.message, "data": e.data}}
        text = text_of(result)
        return not result.is_error, text, {"result": text[:300], "is_error": result.is_error,
                                           "elapsed_s": round(time.monotonic() - t, 3)}

    stage = "connect"
    try:
        with anyio.fail_after(args.deadline):
            client = Client(
                stdio_client(params, errlog=sys.stderr),
                read_timeout_seconds=args.step_timeout,
                client_info=types.Implementation(name="tether-bridge-conformance-harness", version="0.1.0"),
            )
            async with client:
                record("initialize", True, {"scenario": scenario, "protocol": client.protocol_version,
                                            "bridge": [args.tether, "bridge", *bridge]})
                stage = "tools/list"
                with anyio.fail_after(args.step_timeout):
                    listed = await client.list_tools()
                tools = {t.name: t for t in listed.tools}
                record("tools/list", True, {"tools": sorted(tools)})
                stage = "scenario"
                if scenario == "initialize":
                    pass
                elif scenario == "tools_call":
                    ok, text, d = await call(client, "add_numbers", {"a": 5, "b": 3})
                    record("tools/call add_numbers", ok and "8" in text, d)
                elif scenario == "sse-retry":
                    ok, text, d = await call(client, "test_reconnection", {})
                    record("tools/call test_reconnection", ok and "Reconnection test completed successfully" in text, d)
                else:
                    for name, tool in tools.items():
                        ok, _, d = await call(client, name, sample_arguments(tool))
                        record(f"tools/call {name}", ok, d)
                stage = "close"
    except TimeoutError:
        record(stage, False, {"error": f"timeout: no completion within the deadline ({args.deadline}s run, {args.step_timeout}s step)"})
    except Exception as e:  # noqa: BLE001 - every failure is a reported result
        record(stage, False, {"error": exc_text(e)})
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tether", default="tether", help="the tether binary (default: tether on PATH)")
    ap.add_argument("--log-file", help="the bridge's --log-file")
    ap.add_argument("--bridge-arg", action="append", default=[], help="one more argument for `tether bridge` (repeatable)")
    ap.add_argument("--step-timeout", type=float, default=20.0, help="deadline for one request (s)")
    ap.add_argument("--deadline", type=float, default=45.0, help="deadline for the whole run (s)")
    ap.add_argument("url", help="the scenario server's URL (the conformance suite appends it)")
    args = ap.parse_args()
    sys.exit(anyio.run(run, args))


if __name__ == "__main__":
    main()
