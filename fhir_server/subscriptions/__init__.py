"""FHIR Subscriptions: R4 criteria subscriptions and the topic-based backport IG, with the
diabetes topics (topics.py), matched in the write transaction into an outbox
(outbox.py, outbox_sqlite.py, outbox_mongo.py) and sent by one delivery worker
(delivery.py) in order per subscription, at least once, signed (notify.py)."""
