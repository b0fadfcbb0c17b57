"""One event's way through dupwatch, without Kafka: parse, fetch (URIs), decode, the cascade,
and the verdict or dead letter; the same path `dupwatch scan` runs over files. The worker's
metrics are counted here."""
