"""Kafka without Faust: client settings and topics, the embedded broker, publishing events and
reading topics back (verdicts, dead letters)."""
