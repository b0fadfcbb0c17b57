"""Wire formats: the image event, the verdict, the dead-letter record and the control command.

The JSON Schema documents in ``v1/`` are the contract; the dataclasses in ``records`` are what
the code uses. Every record dupwatch writes is checked against its schema in the tests.
"""
from dupwatch.schemas.records import (
    SCHEMA_VERSION, Candidate, ControlCommand, DeadLetter, Flag, ImageEvent, Reason, Rejected,
    Verdict, VerdictLabel, utc_now,
)
from dupwatch.schemas.validation import identity_of, parse_control, parse_image_event, schema, validate

__all__ = [
    "SCHEMA_VERSION", "Candidate", "ControlCommand", "DeadLetter", "Flag", "ImageEvent", "Reason",
    "Rejected", "Verdict", "VerdictLabel", "identity_of", "parse_control", "parse_image_event",
    "schema", "utc_now", "validate",
]
