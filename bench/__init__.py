"""`make bench` / `python -m bench`: the service's figures next to baselines measured in the
same run (DESIGN.md principle 7), written to docs/performance.md.

Phases: baselines (binary COPY, prepared point SELECT, stock eventsourcing saves, uvicorn
hello with our client and with httpx); creates over HTTP at 32 concurrent clients with 1 and
2 gateway workers; write→read visibility; seeding N customers; projection catch-up from zero;
get by id (open loop) and two-filter lists over the N customers; the relay to JetStream.
"""
