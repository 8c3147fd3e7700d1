"""Real-time financial news monitor: Kafka `news` -> sentiment service (gRPC) -> `news.scored` -> surge `alerts`.

Modules:
    config     pydantic-settings configuration (env prefix NLPSUITE_MONITOR_, Kafka connection, thresholds)
    schema     the message models (NewsItem, ScoredItem, Alert, DeadLetter) and input validation
    windows    event-time sliding windows and surge detection (pure logic, no I/O)
    scorer     stage 1: news -> validate/DLQ -> sentiment -> news.scored (keyed by entity)
    aggregator stage 2: news.scored -> windows -> alerts (state rebuilt from the log on assignment)
    broker     the local Tansu launcher for tests and demos (the only Tansu-specific code)
    producer   replay a JSONL file into the news topic
"""
