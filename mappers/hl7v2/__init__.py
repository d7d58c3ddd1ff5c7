"""HL7 v2 messages (2.2 to 2.8) to FHIR R4 transaction Bundles, and their ACKs.

    to_bundle(message) -> dict          one message, one transaction Bundle
    map_message(message) -> MappedMessage   the Bundle, what was left aside, A40 merges
    to_bundles(data) -> list[dict]      every message of a batch (FHS/BHS or concatenated)
    split_batch(data) -> list[str]      the messages of a batch
    build_ack(message, code, error_text, warnings=()) -> str
    MappingError(message, segment=None, field=None)
    MappingWarning(segment, text)       accepted content that is not stored (ERR, W)
"""

from mappers.hl7v2.ack import build_ack
from mappers.hl7v2.convert import (
    SUPPORTED_TYPES,
    MappedMessage,
    PatientMerge,
    map_message,
    to_bundle,
)
from mappers.hl7v2.errors import MappingCancelled, MappingError, MappingWarning
from mappers.hl7v2.parser import Message, parse, split_batch


def to_bundles(data: str | bytes, **options) -> list[dict]:
    """One Bundle per message of a batch, in order (raises on the first bad message)."""
    return [to_bundle(message, **options) for message in split_batch(data)]


__all__ = [
    "SUPPORTED_TYPES",
    "MappedMessage",
    "MappingCancelled",
    "MappingError",
    "MappingWarning",
    "Message",
    "PatientMerge",
    "build_ack",
    "map_message",
    "parse",
    "split_batch",
    "to_bundle",
    "to_bundles",
]
