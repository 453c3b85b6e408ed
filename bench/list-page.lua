-- wrk script: each request lists one page of 1000 keys from a random place in a namespace of
-- 1,000,000 keys named k0000000..k0999999 (a 4-digit prefix selects exactly 1000 of them).
math.randomseed(os.time())
request = function()
  local prefix = string.format("k%04d", math.random(0, 999))
  return wrk.format("GET", wrk.path .. "?limit=1000&prefix=" .. prefix)
end
