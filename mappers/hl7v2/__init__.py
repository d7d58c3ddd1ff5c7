"""HL7 v2 messages (2.2 to 2.8) to FHIR R4 transaction Bundles, and their ACKs.

    to_bundle(message) -> dict          one message, one transaction Bundle
    to_bundles(data) -> list[dict]      every message of a batch (FHS/BHS or concatenated)
    split_batch(data) -> list[str]      the messages of a batch
    build_ack(message, code, error_text) -> str
    MappingError(message, segment=None, field=None)
"""

from mappers.hl7v2.ack import build_ack
from mappers.hl7v2.convert import SUPPORTED_TYPES, to_bundle
from mappers.hl7v2.errors import MappingError
from mappers.hl7v2.parser import Message, parse, split_batch


def to_bundles(data: str | bytes, **options) -> list[dict]:
    """One Bundle per message of a batch, in order (raises on the first bad message)."""
    return [to_bundle(message, **options) for message in split_batch(data)]


__all__ = [
    "SUPPORTED_TYPES",
    "MappingError",
    "Message",
    "build_ack",
    "parse",
    "split_batch",
    "to_bundle",
    "to_bundles",
]
