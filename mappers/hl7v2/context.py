"""What the segment mappers share while one message is mapped."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo
from functools import cached_property
from typing import Any
from urllib.parse import quote

from mappers.bundle import TransactionBuilder, identifier_query
from mappers.hl7v2.datatypes import date_time, hd_system
from mappers.hl7v2.parser import Message

Resource = dict[str, Any]


@dataclass
class MappingContext:
    """The message, the Bundle being built, and the references entries point to."""

    message: Message
    tz: tzinfo
    builder: TransactionBuilder = field(default_factory=TransactionBuilder)
    patient_ref: str | None = None
    patient_key: str | None = None  # the identifier value other business ids derive from
    encounter_ref: str | None = None
    encounter_key: dict | None = None  # the visit number of the current Encounter
    _used_searches: dict[str, str] = field(default_factory=dict)

    @cached_property
    def sender_system(self) -> str:
        """A URI naming the sender (MSH-4, else MSH-3): the system of its local identifiers.

        Identifiers without an assigning authority are only unique within the sending
        facility, so they are scoped to it; that keeps conditional matches honest.
        """
        msh = self.message.msh
        for n in (4, 3):
            system = hd_system(msh.value(n))
            if system:
                return system
        return "urn:id:unknown-sender"

    @cached_property
    def message_system(self) -> str:
        """Scope for identifiers built from the message control id (last resort keys)."""
        return self.sender_system + ("/" if "://" in self.sender_system else ":") + "msg"

    @cached_property
    def _source(self) -> str:
        source = self.sender_system
        control = self.message.control_id
        return f"{source}#{quote(control, safe='')}" if control else source

    def meta(self, profile: str | None = None) -> dict:
        meta: dict = {"source": self._source}
        if profile:
            meta["profile"] = [profile]
        return meta

    def dtm(self, text: str) -> str | None:
        return date_time(text, self.tz)

    def unique_search(self, resource_type: str, ident: dict) -> tuple[dict, str]:
        """The identifier and its search, made unique within this Bundle.

        A transaction must not touch one resource twice; a sender that repeats a set id
        gets a deterministic suffix, so a re-sent message still yields the same requests.
        """
        base_value = ident["value"]
        suffix = 1
        while True:
            search = identifier_query(ident.get("system"), ident["value"])
            key = f"{resource_type}?{search}"
            if key not in self._used_searches:
                self._used_searches[key] = ""
                return ident, search
            suffix += 1
            ident = {**ident, "value": f"{base_value}~{suffix}"}

    def upsert(self, resource: Resource, ident: dict) -> str:
        ident, search = self.unique_search(resource["resourceType"], ident)
        _replace_identifier(resource, ident)
        return self.builder.upsert(resource, search)

    def create_if_none(self, resource: Resource, ident: dict) -> str:
        ident, search = self.unique_search(resource["resourceType"], ident)
        _replace_identifier(resource, ident)
        return self.builder.create(resource, if_none_exist=search)

    def subject(self) -> dict | None:
        return {"reference": self.patient_ref} if self.patient_ref else None


def _replace_identifier(resource: Resource, ident: dict) -> None:
    """Make sure the identifier searched on is the one the resource carries."""
    identifiers = resource.setdefault("identifier", [])
    for index, existing in enumerate(identifiers):
        if existing.get("system") == ident.get("system") and existing.get("value") in (
            ident["value"],
            ident["value"].split("~")[0],
        ):
            identifiers[index] = {**existing, **ident}
            return
    identifiers.insert(0, ident)
