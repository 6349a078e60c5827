-- POST one ~200-byte envelope without event_id or timestamp (weir fills both: every
-- request is a real append, never a duplicate, and its time is always in bounds).
-- Same size as ../shared/bench/lua/post200.body.
wrk.method = "POST"
wrk.path = "/v1/topics/clickstream/events"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"event_type":"page.click","payload":{"user_id":"u-42","page_id":"page-7","session":"s-000042","ref":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}'
