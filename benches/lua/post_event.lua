-- POST one ~200-byte envelope without event_id (weir generates one, so every request
-- is a real append, never a duplicate). Same size as ../shared/bench/lua/post200.body.
wrk.method = "POST"
wrk.path = "/v1/topics/clickstream/events"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"event_type":"page.click","timestamp":"2026-11-27T10:00:00Z","payload":{"user_id":"u-42","page_id":"page-7","session":"s-000042","ref":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}'
