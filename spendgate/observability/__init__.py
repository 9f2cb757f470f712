"""What an operator sees of a running gateway: Prometheus metrics and structured logs.

logs.py      the request id of the call being served (a context variable set by the
             proxy and the admin app), JSON and text log formats, the logging config
             ``spendgate serve`` applies (uvicorn's loggers included)
metrics.py   counters and histograms the hot path increments (requests by kind, status
             class and outcome; latency; upstream latency; spend by org, team and model
             with bounded label sets; webhook attempts; Redis and database errors)
scrape.py    ``GET /metrics``: those plus gauges computed at scrape time (ledger
             backlog, webhook outbox depth), optionally behind a bearer token;
             prometheus-client's multiprocess mode for ``serve --workers N``
"""
