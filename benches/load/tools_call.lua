-- wrk script: MCP `tools/call` of the allowed read-only tool `list_deployments`
-- with varied `env` arguments and varied JSON-RPC ids.
--
-- Every response is checked: HTTP 200, a JSON-RPC result (not an error), and
-- `"isError":false` (a call blocked by the gateway's policy answers 200 with
-- `"isError":true`, which would otherwise look like success).
--
-- done() prints a human summary plus one machine-readable line:
--   WRK_RESULT req=<n> secs=<s> rps=<r> p50_us=<u> p90_us=<u> p99_us=<u> max_us=<u>
--              non2xx=<n> bad_body=<n> sock_err=<n>

local threads = {}
local thread_no = 0

function setup(thread)
   thread_no = thread_no + 1
   thread:set("tid", thread_no)
   table.insert(threads, thread)
end

local envs = {
   "prod", "staging", "dev", "qa", "eu-west-1", "us-east-2",
   "canary", "perf", "prod-eu", "sandbox", "preview", "dr",
}

local path = "/mcp"
local headers = {
   ["Content-Type"] = "application/json",
   ["Accept"] = "application/json, text/event-stream",
   ["MCP-Protocol-Version"] = os.getenv("MCP_PROTOCOL_VERSION") or "2025-06-18",
   -- A virtual server needs the session its initialize opened (run.sh opens one).
   ["Mcp-Session-Id"] = os.getenv("MCP_SESSION_ID"),
}

function init(args)
   tid = tid or 1
   n = 0
   non2xx = 0
   bad_body = 0
   math.randomseed(tid * 7919 + os.time())
end

function request()
   n = n + 1
   -- ids vary per request and per thread; alternate number and string ids
   local id
   if n % 3 == 0 then
      id = string.format('"t%d-%d"', tid, n)
   else
      id = tostring(tid * 100000000 + n)
   end
   local args
   local k = math.random(1, 20)
   if k == 1 then
      args = '{}'                                                 -- env is optional
   elseif k <= 4 then
      args = string.format('{"env":"%s-%d"}', envs[math.random(#envs)], math.random(1, 99999))
   else
      args = string.format('{"env":"%s"}', envs[math.random(#envs)])
   end
   local body = string.format(
      '{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"list_deployments","arguments":%s}}',
      id, args)
   return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   elseif not (string.find(body, '"result"', 1, true) and string.find(body, '"isError":false', 1, true)) then
      bad_body = bad_body + 1
   end
end

function done(summary, latency, requests)
   local t_non2xx, t_bad = 0, 0
   for _, thread in ipairs(threads) do
      t_non2xx = t_non2xx + (thread:get("non2xx") or 0)
      t_bad = t_bad + (thread:get("bad_body") or 0)
   end
   local e = summary.errors
   local sock = e.connect + e.read + e.write + e.timeout
   local secs = summary.duration / 1e6
   io.write(string.format("checked responses: %d non-2xx, %d 2xx without a successful tool result, %d socket errors (connect %d, read %d, write %d, timeout %d)\n",
      t_non2xx, t_bad, sock, e.connect, e.read, e.write, e.timeout))
   io.write(string.format("WRK_RESULT req=%d secs=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d bad_body=%d sock_err=%d\n",
      summary.requests, secs, summary.requests / secs,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      t_non2xx, t_bad, sock))
end
