-- wrk script for the bench: rotates over session cookies (one prepared request per
-- cookie, so the per-request cost in wrk is a table lookup) and prints exact
-- latency percentiles as one JSON line.
-- Arguments (after `--`): host header, cookie name, cookie file ("" = no cookie),
-- Authorization header value (optional; "" = none): scenario GB's app password.

local prepared = {}
local index = 0

function init(args)
  local host, cookie_name, cookie_file, authorization = args[1], args[2], args[3], args[4]
  local base = {
    ["Host"] = host,
    ["User-Agent"] = "authgate-bench/1 (wrk)",
    ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ["Accept-Language"] = "en-GB,en;q=0.5",
  }
  if authorization ~= nil and authorization ~= "" then
    base["Authorization"] = authorization
  end
  if cookie_file ~= nil and cookie_file ~= "" then
    for line in io.lines(cookie_file) do
      if line ~= "" then
        local headers = {}
        for k, v in pairs(base) do headers[k] = v end
        -- Browsers send other cookies too; the gateway must find its own among them.
        headers["Cookie"] = "_ga=GA1.1.1234567890.1700000000; " .. cookie_name .. "=" .. line .. "; theme=dark"
        prepared[#prepared + 1] = wrk.format("GET", wrk.path, headers)
      end
    end
  end
  if #prepared == 0 then
    prepared[1] = wrk.format("GET", wrk.path, base)
  end
  -- Each thread has its own Lua state: seed from its address so threads start apart.
  math.randomseed((tonumber(string.sub(tostring({}), 8), 16) or 0) % 2147483647)
  index = math.random(#prepared)
end

function request()
  index = index % #prepared + 1
  return prepared[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
