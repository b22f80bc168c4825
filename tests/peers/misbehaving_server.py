"""An MCP server over stdio that misbehaves on request, for faults no real server makes on
purpose. Tools: `echo` (well-behaved), `huge` and `huge_id_last` (an answer over tether's
16 MiB message limit, id first or last), `stderr_flood` (`mb` MB of stderr in one line),
`junk` (`mb` MB of 1 KB non-JSON stdout lines). It ignores EPIPE, like servers that wedge a
naive reader: a write to a closed pipe is dropped and the server carries on. With
MISBEHAVE_EXIT_BEFORE_INIT=1 it exits (status 1, without a word) on any request that comes
before `initialize`, as some handshake-era servers do on a `server/discover` probe."""

import json
import os
import sys

OUT = sys.stdout.buffer
ERR = sys.stderr.buffer
MIB = 1 << 20


def write(stream, data):
    try:
        stream.write(data)
        stream.flush()
    except (BrokenPipeError, OSError):
        pass


def answer(req_id, result):
    write(OUT, json.dumps({"jsonrpc": "2.0", "id": req_id, "result": result}).encode() + b"\n")


def text(t):
    return {"content": [{"type": "text", "text": t}]}


TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("echo", "huge", "huge_id_last", "stderr_flood", "junk")]

EXIT_BEFORE_INIT = os.environ.get("MISBEHAVE_EXIT_BEFORE_INIT") == "1"
initialized = False

for raw in sys.stdin.buffer:
    try:
        msg = json.loads(raw)
    except ValueError:
        continue
    method, req_id = msg.get("method"), msg.get("id")
    if req_id is None or method is None:
        continue
    if method != "initialize" and not initialized and EXIT_BEFORE_INIT:
        sys.exit(1)
    if method == "initialize":
        initialized = True
        answer(req_id, {
            "protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "misbehaving", "version": "1"},
        })
    elif method == "tools/list":
        answer(req_id, {"tools": TOOLS})
    elif method == "tools/call":
        name = msg["params"]["name"]
        args = msg["params"].get("arguments") or {}
        if name == "echo":
            answer(req_id, text(args.get("message", "")))
        elif name == "huge":
            answer(req_id, text("x" * (17 * MIB)))
        elif name == "huge_id_last":
            body = json.dumps({"jsonrpc": "2.0", "result": text("y" * (17 * MIB)), "id": req_id})
            write(OUT, body.encode() + b"\n")
        elif name == "stderr_flood":
            chunk = b"e" * MIB
            for _ in range(int(args.get("mb", 200))):
                write(ERR, chunk)
            write(ERR, b"\n")
            answer(req_id, text("flooded"))
        elif name == "junk":
            line = b"j" * 1023 + b"\n"
            block = line * 1024
            for _ in range(int(args.get("mb", 50))):
                write(OUT, block)
            answer(req_id, text("junked"))
        else:
            write(OUT, json.dumps({"jsonrpc": "2.0", "id": req_id, "error": {"code": -32602, "message": "unknown tool"}}).encode() + b"\n")
    elif method == "ping":
        answer(req_id, {})
    else:
        write(OUT, json.dumps({"jsonrpc": "2.0", "id": req_id, "error": {"code": -32601, "message": "no"}}).encode() + b"\n")
