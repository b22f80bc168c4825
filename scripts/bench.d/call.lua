-- wrk script for scripts/bench: `tools/call` of the echo tool over Streamable HTTP, in sessions
-- that scripts/bench opened beforehand (initialize + notifications/initialized).
--
-- Environment: BENCH_SIDS   a file with one Mcp-Session-Id per line; wrk thread k uses line
--                           k mod N, so `-t N -c N` pins one session to each connection and
--                           `-t 2 -c 16` with one line shares one session over 16 connections
--              BENCH_PROTO  the negotiated protocol version (sent as MCP-Protocol-Version)
-- Every request has its own JSON-RPC id. A response counts as an error unless it is a 200
-- whose body carries a JSON-RPC "result"; done() prints one JSON line for the driver.

local threads = {}
local sids = {}
local next_thread = 0

function setup(thread)
  if #sids == 0 then
    for line in io.lines(os.getenv("BENCH_SIDS")) do
      if line ~= "" then sids[#sids + 1] = line end
    end
  end
  thread:set("tid", next_thread)
  thread:set("sid", sids[next_thread % #sids + 1])
  next_thread = next_thread + 1
  threads[#threads + 1] = thread
end

function init(args)
  headers = {
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json, text/event-stream",
    ["Mcp-Session-Id"] = sid,
    ["MCP-Protocol-Version"] = os.getenv("BENCH_PROTO"),
  }
  n = tid * 1000000000
  bad = 0
  sample = ""
end

function request()
  n = n + 1
  local body = '{"jsonrpc":"2.0","id":' .. n ..
    ',"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}'
  return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
  if status ~= 200 or not string.find(body, '"result"', 1, true) then
    bad = bad + 1
    if sample == "" then
      sample = (status .. " " .. string.sub(body, 1, 300)):gsub('[%c"\\]', " ")
    end
  end
end

function done(summary, latency, requests)
  local bad_total, sample_any = 0, ""
  for _, t in ipairs(threads) do
    bad_total = bad_total + (t:get("bad") or 0)
    local s = t:get("sample") or ""
    if sample_any == "" then sample_any = s end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bad":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"sample":"%s"}\n',
    summary.requests, summary.duration, bad_total, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    sample_any))
end
