"""MSH to MessageHeader (optional: a record of each receipt, not a business fact)."""

from __future__ import annotations

from mappers.hl7v2.context import MappingContext, Resource
from mappers.hl7v2.datatypes import hd_system

_EVENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0003"


def map_message_header(ctx: MappingContext) -> Resource:
    msh = ctx.message.msh
    header: Resource = {
        "resourceType": "MessageHeader",
        "meta": ctx.meta(),
        "eventCoding": {"system": _EVENT_SYSTEM, "code": ctx.message.trigger_event or "unknown"},
        "source": {"endpoint": ctx.sender_system},
    }
    application = msh.text(3)
    if application:
        header["source"]["name"] = application
    version = ctx.message.version
    if version:
        header["source"]["version"] = version
    receiver = hd_system(msh.value(6)) or hd_system(msh.value(5))
    if receiver:
        header["destination"] = [{"name": msh.text(5) or msh.text(6), "endpoint": receiver}]
    return header
