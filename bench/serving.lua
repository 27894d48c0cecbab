-- wrk script of bench/serving.py: MODE picks the request; inputs in @DIR@ (written by the bench).
local dir = "@DIR@"
local mode = os.getenv("MODE")
local suffix = os.getenv("PATH_SUFFIX") or ""
local auth = "Bearer " .. io.open(dir .. "/token"):read("*l")
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local ids, rows, next_row, counter = {}, {}, 0, 0

function init(args)
  for line in io.lines(dir .. "/ids") do ids[#ids + 1] = line end
  local n = 0
  for line in io.lines(dir .. "/updates") do
    n = n + 1
    if n % 2 == tid - 1 then  -- two wrk threads: each updates its own customers
      local id, version, email = line:match("([^,]+),([^,]+),(.+)")
      rows[#rows + 1] = {id, version, email}
    end
  end
  math.randomseed(os.time() + tid)
end

local function body(email, name)
  return string.format(
    '{"email":"%s","name":"%s","age":35,"location":{"country":"ES","city":"Madrid"},'
      .. '"preferences":{"marketingConsent":true,"dataProcessingConsent":true}}',
    email, name)
end

local json = {["Content-Type"] = "application/json", ["Authorization"] = auth}
local bearer = {["Authorization"] = auth}

function request()
  if mode == "hello" then
    return wrk.format("GET", "/")
  elseif mode == "get" or mode == "lean-get" then
    local prefix = mode == "get" and "/api/v1/customers/" or "/lean/customers/"
    return wrk.format("GET", prefix .. ids[math.random(#ids)], bearer)
  elseif mode == "list" then
    return wrk.format("GET", "/api/v1/customers?country=ES&status=ACTIVE&limit=50", bearer)
  elseif mode == "shape" then
    return wrk.format("GET", "/api/v1/customers?" .. suffix, bearer)
  elseif mode == "create" or mode == "lean-create" then
    counter = counter + 1
    local email = string.format("wrk%d.%d.%d.%s@example.com", tid, counter, os.time(), mode)
    local path = mode == "create" and "/api/v1/customers" or "/lean/customers"
    return wrk.format("POST", path, json, body(email, "Bench Person"))
  elseif mode == "update" then
    next_row = next_row + 1
    local row = rows[next_row]
    local headers = {["Content-Type"] = "application/json", ["Authorization"] = auth,
                     ["If-Match"] = '"' .. row[2] .. '"'}
    return wrk.format("PUT", "/api/v1/customers/" .. row[1], headers, body(row[3], "Renamed Person"))
  end
end
