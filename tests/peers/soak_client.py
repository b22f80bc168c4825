#!/usr/bin/env python3
"""Soak client: the official Python MCP SDK (mcp 2.3.0) calling one tool in a loop through tether.

Used by scripts/soak, while it kills upstreams and tether itself. One session at a time; it is
kept across failures (tether promises it survives them) and replaced only when tether answers
that it is gone. Every call has a deadline. Output: a JSON line every --report seconds and at the
end, {"client": "py", "ok", "error", "hung", "wrong", "sessions", "sessions_lost", "errors": {...}}:

  ok            the call returned the expected result
  error         the call ended with an error (JSON-RPC or transport): it ended, but did not succeed
  hung          no answer within --call-timeout
  wrong         an answer that is not the expected one (a lost or misrouted result)
  sessions_lost a session answered 404 / "session not found" (the client had to start over)

    python tests/peers/soak_client.py --url http://127.0.0.1:PORT/mcp --tool echo --seconds 600
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def expected_text(tool: str, msg: str) -> str:
    # server-everything answers "Echo: <msg>"; tether-echo echoes the message.
    return f"Echo: {msg}" if tool == "echo" and ARGS.everything else msg


def text_of(result: Any) -> str:
    for c in getattr(result, "content", []) or []:
        t = getattr(c, "text", None)
        if t is not None:
            return t
    return ""


def stats_connected_since(stats: Counter[str]) -> bool:
    """Whether the last session got past its handshake (counted once per session)."""
    return stats["connected"] >= stats["sessions"]


def classify(e: BaseException) -> tuple[str, bool]:
    """A short label for an error, and whether it says the session is gone."""
    s = f"{type(e).__name__}: {e}"
    lost = "404" in s or "not found" in s.lower() or "session terminated" in s.lower()
    code = getattr(getattr(e, "error", None), "code", None)
    label = f"code {code}" if code is not None else type(e).__name__
    return label, lost


@asynccontextmanager
async def transport(url: str) -> Any:
    async with create_mcp_http_client() as http_client:
        async with streamable_http_client(url, http_client=http_client) as streams:
            yield streams


async def run() -> None:
    stats: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    end = time.monotonic() + ARGS.seconds
    next_report = time.monotonic() + ARGS.report

    def report() -> None:
        print(json.dumps({"client": "py", "url": ARGS.url, **stats, "errors": dict(errors.most_common(8))}), flush=True)

    async def one_session() -> None:
        nonlocal next_report
        client = Client(
            transport(ARGS.url),
            mode="legacy",
            read_timeout_seconds=ARGS.call_timeout,
            client_info=types.Implementation(name="tether-soak-py", version="0.1.0"),
        )
        # The handshake is bounded by read_timeout_seconds; the client's task group must be
        # entered and left in this task, so no cancel scope wraps `async with`.
        async with client:
            stats["connected"] += 1
            while time.monotonic() < end:
                msg = f"soak {uuid.uuid4().hex[:12]}"
                try:
                    with anyio.fail_after(ARGS.call_timeout + 1):
                        result = await client.call_tool(ARGS.tool, {"message": msg})
                    if text_of(result) == expected_text(ARGS.tool, msg):
                        stats["ok"] += 1
                    elif getattr(result, "is_error", False) or getattr(result, "isError", False):
                        stats["error"] += 1
                        errors[f"tool error: {text_of(result)[:60]}"] += 1
                    else:
                        stats["wrong"] += 1
                        errors[f"wrong: {text_of(result)[:60]}"] += 1
                except TimeoutError:
                    stats["hung"] += 1
                    print(json.dumps({"hung_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "message": msg}),
                          file=sys.stderr, flush=True)
                except Exception as e:  # noqa: BLE001 - a soak counts every failure
                    label, lost = classify(e)
                    if "timed out" in str(e).lower():
                        stats["hung"] += 1
                        print(json.dumps({"hung_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "message": msg}),
                              file=sys.stderr, flush=True)
                    else:
                        stats["error"] += 1
                    errors[label] += 1
                    if lost:
                        stats["sessions_lost"] += 1
                        return
                    await anyio.sleep(0.1)
                if time.monotonic() >= next_report:
                    report()
                    next_report += ARGS.report
                await anyio.sleep(ARGS.pause)

    while time.monotonic() < end:
        stats["sessions"] += 1
        try:
            await one_session()
        except Exception as e:  # noqa: BLE001
            label, _ = classify(e)
            if not stats_connected_since(stats):
                stats["connect_error"] += 1
            errors[f"session: {label}"] += 1
            await anyio.sleep(0.5)
    report()


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--tool", default="echo")
    ap.add_argument("--everything", action="store_true", help="the upstream is server-everything")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--call-timeout", type=float, default=60)
    ap.add_argument("--pause", type=float, default=0.05)
    ap.add_argument("--report", type=float, default=60)
    ARGS = ap.parse_args()
    anyio.run(run)


ARGS: argparse.Namespace
if __name__ == "__main__":
    sys.exit(main())
