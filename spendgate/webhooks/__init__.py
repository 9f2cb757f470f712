"""Warnings that reach people: webhook endpoints, signed deliveries, Slack, PagerDuty
and in-app notifications.

    events row ──fan_out (same transaction)──┬── webhook_deliveries (durable outbox)
                                             │      └── DeliveryWorker: lease, sign, POST,
                                             │          log attempt, back off, retry
                                             └── notifications (per user preferences,
                                                    low severity batched into a daily digest)

Pure pieces (no I/O): ``catalog`` (event types, severity), ``matching`` (who wants an
event), ``formats`` (generic / Slack / PagerDuty bodies), ``retries`` (backoff),
``signing`` (Standard Webhooks). I/O pieces: ``targets`` (DNS checks), ``tables``,
``store`` (endpoints, delivery log), ``fanout``, ``outbox`` (emit, leasing, attempts,
PagerDuty resolves), ``notifications``, ``worker``, ``runtime``.
"""
