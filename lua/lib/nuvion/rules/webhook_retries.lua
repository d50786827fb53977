-- When a webhook delivery is tried again, and when an endpoint is given up on.
-- Read by nuvion.webhooks (docs/webhooks.md); edit and reload to change.
--
-- Attempt 1 goes at once. A failed attempt n (n < attempts) is tried again after
-- first_retry_ms * 2^(n-1): exponential backoff, the same formula as the queue's
-- `backoff = { type = "exponential", delay = first_retry_ms }`, so queue jobs and this table agree.
--
--   attempt  waits before it   at (after the event)
--      1        0               0
--      2        1 min           1 min
--      3        2 min           3 min
--      4        4 min           7 min
--      5        8 min          15 min
--      6       16 min          31 min
--      7       32 min          1 h 03
--      8        1 h 04          2 h 07
--      9        2 h 08          4 h 15
--     10        4 h 16          8 h 31
--     11        8 h 32         17 h 03
--     12       17 h 04         34 h 07
--     13       34 h 08         68 h 15   (about 2.8 days: the last try)
return {
  attempts = 13,
  first_retry_ms = 60 * 1000,

  -- An endpoint whose attempts have failed `failures` times in a row, over at least `for_ms`,
  -- is disabled (event webhook_endpoint.disabled); its pending deliveries fail. Re-enabling it
  -- (update_endpoint{ enabled = true }) starts a new streak.
  disable_after = {
    failures = 20,
    for_ms = 3 * 24 * 3600 * 1000,
  },

  -- What one attempt may take, and how much of the answer is kept.
  timeout_ms = 10000,
  response_excerpt_bytes = 512,
}
