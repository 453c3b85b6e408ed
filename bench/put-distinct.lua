-- wrk script: PUTs a 100-byte value to a key no other request of the run uses (the URL given
-- to wrk is the namespace's .../values path), so the per-key rate limit of the default
-- configuration never refuses one. The first script argument tags the run's keys.
local n = 0
local body = string.rep("v", 100)
local tag

function init(args)
  tag = (args[1] or "run") .. "-" .. tostring(math.random(1000000000))
end

function request()
  n = n + 1
  return wrk.format("PUT", wrk.path .. "/" .. tag .. "-" .. n, nil, body)
end
