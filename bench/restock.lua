-- wrk script: POST /api/v1/inventory/restock, one unique Idempotency-Key per request.
--
-- wrk ... -s bench/restock.lua URL -- TAG MODE NSKUS PREFIX APIKEY HOT OUTFILE
--   TAG     run tag: goes into the Idempotency-Key, X-Request-ID and the body's `reference`
--   MODE    random | hot     (random: any of NSKUS SKUs; hot: the first HOT SKUs)
--   PREFIX  the seed's sku_prefix (SKUs are PREFIX .. %07d)
--   OUTFILE where done() writes "request_id delta" for every 201 the client saw
--
-- The key is TAG-thread-n-skuindex-qty, so the request body can be rebuilt from the key
-- alone (the checker re-sends unanswered requests with their key, as a retrying client would).
-- X-Request-ID = the key: the API echoes it and stores it in movements.request_id.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  tag = args[1]
  mode = args[2]
  nskus = tonumber(args[3])
  prefix = args[4]
  auth = "Bearer " .. args[5]
  hot = tonumber(args[6])
  outfile = args[7]
  math.randomseed(tid * 104729 + os.time())
  counter = 0
  n201 = 0
  sum201 = 0
  nother = 0
  statuses = ""
  other = {}
  seen = {}
  path = "/api/v1/inventory/restock"
end

function request()
  counter = counter + 1
  local idx
  if mode == "hot" then
    idx = math.random(0, hot - 1)
  else
    idx = math.random(0, nskus - 1)
  end
  local qty = math.random(1, 100)
  local key = string.format("%s-%d-%d-%d-%d", tag, tid, counter, idx, qty)
  local body = string.format('{"sku":"%s%07d","quantity":%d,"reference":"%s"}',
                             prefix, idx, qty, tag)
  return wrk.format("POST", path, {
    ["Authorization"] = auth,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = key,
    ["X-Request-ID"] = key,
  }, body)
end

function response(status, headers, body)
  if status == 201 then
    local rid = headers["x-request-id"] or headers["X-Request-ID"] or "?"
    local delta = tonumber(string.match(body, '"delta":(%d+)')) or 0
    n201 = n201 + 1
    sum201 = sum201 + delta
    seen[n201] = rid .. " " .. delta
  else
    nother = nother + 1
    other[status] = (other[status] or 0) + 1
    local parts = {}
    for k, v in pairs(other) do parts[#parts + 1] = k .. ":" .. v end
    statuses = table.concat(parts, ",")
  end
end

function done(summary, latency, requests)
  local n, s, o, st = 0, 0, 0, {}
  local out = io.open(threads[1]:get("outfile"), "w")
  for _, t in ipairs(threads) do
    n = n + t:get("n201")
    s = s + t:get("sum201")
    o = o + t:get("nother")
    local sts = t:get("statuses")
    if sts ~= "" then st[#st + 1] = sts end
    for _, line in ipairs(t:get("seen")) do
      out:write(line, "\n")
    end
  end
  out:close()
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d"
    .. " n201=%d sum201=%d non201=%d statuses=%s"
    .. " err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    n, s, o, (#st > 0 and table.concat(st, ",") or "-"),
    e.connect, e.read, e.write, e.timeout))
end
