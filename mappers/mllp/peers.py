"""Who may send what over MLLP: HL7 v2 carries no credentials, so the listener decides by the
peer's network address (and its TLS client certificate, with mutual TLS), then by what each
message claims: its sending application (MSH-3), sending facility (MSH-4) and type (MSH-9).

A peer is registered with the addresses it connects from, the applications and facilities
it may claim and the message types it may send; `"*"` allows any. A connection from an
address no peer covers is closed; a message a matching peer may not send is refused (AR).
Without registrations, only loopback peers are admitted (anything may be sent from them):
an operator opening the listener to the network has to say who may use it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ANY = "*"
LOOPBACK = ("127.0.0.0/8", "::1/128")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PeerConfigError(ValueError):
    """A peer registration that cannot be used (says which and why)."""


@dataclass(frozen=True)
class Claim:
    """What a message says of itself in its MSH (read from its first line only)."""

    application: tuple[str, ...]  # MSH-3 namespace id and universal id
    facility: tuple[str, ...]  # MSH-4 namespace id and universal id
    message_type: str  # MSH-9.1^MSH-9.2, e.g. ORU^R01
    control_id: str

    @property
    def sending_application(self) -> str:
        return self.application[0] if self.application else ""

    @property
    def sending_facility(self) -> str:
        return self.facility[0] if self.facility else ""


def read_claim(head: bytes) -> Claim | None:
    """The Claim of a raw message (its MSH line), or None without an MSH."""
    start = head.find(b"MSH")
    if start < 0 or len(head) < start + 8:
        return None
    line = head[start:start + 4096].replace(b"\n", b"\r").split(b"\r", 1)[0]
    text = line.decode("latin-1")
    fields = ["MSH", *text[4:].split(text[3])]
    component = text[4] if len(text) > 4 else "^"

    def field(n: int) -> list[str]:
        value = fields[n - 1] if n - 1 < len(fields) else ""
        return [part.strip() for part in value.split(component)]

    def hd(n: int) -> tuple[str, ...]:
        parts = field(n)
        return tuple(p for p in parts[:2] if p)

    kind = field(9)
    message_type = "^".join(p.upper() for p in kind[:2] if p)
    control = field(10)[0] if len(fields) >= 10 else ""
    return Claim(hd(3), hd(4), message_type, control)


@dataclass(frozen=True)
class Peer:
    """One registered peer (see the module docstring)."""

    name: str
    networks: tuple[Network, ...]
    applications: frozenset[str]
    facilities: frozenset[str]
    message_types: frozenset[str]
    certificate_names: frozenset[str] = frozenset()  # empty: any certificate (or none)

    def covers(self, address: str, certificate_names: Iterable[str]) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if not any(ip in network for network in self.networks):
            return False
        if not self.certificate_names:
            return True
        return bool(self.certificate_names & {n.lower() for n in certificate_names})

    def refusal(self, claim: Claim) -> str | None:
        """Why this peer may not send this message (None: it may)."""
        if ANY not in self.applications and not (
            {a.upper() for a in claim.application} & self.applications
        ):
            return f"sending application (MSH-3) {claim.sending_application!r} is not " \
                   f"registered for peer {self.name!r}"
        if ANY not in self.facilities and not (
            {f.upper() for f in claim.facility} & self.facilities
        ):
            return f"sending facility (MSH-4) {claim.sending_facility!r} is not " \
                   f"registered for peer {self.name!r}"
        if not _type_allowed(claim.message_type, self.message_types):
            return f"message type {claim.message_type or '(none)'} is not allowed for " \
                   f"peer {self.name!r}"
        return None


def _type_allowed(message_type: str, allowed: frozenset[str]) -> bool:
    if ANY in allowed or message_type in allowed:
        return True
    family = message_type.split("^", 1)[0]
    return f"{family}^*" in allowed


class PeerPolicy:
    """The registered peers; `admit` at connection time, `refusal` per message."""

    def __init__(self, peers: Sequence[Peer]):
        if not peers:
            raise PeerConfigError("no peer registered")
        self.peers = tuple(peers)

    @classmethod
    def loopback_only(cls) -> PeerPolicy:
        return cls([Peer("loopback", _networks(LOOPBACK, "loopback"), frozenset({ANY}),
                         frozenset({ANY}), frozenset({ANY}))])

    @classmethod
    def from_config(cls, entries: Sequence[Mapping[str, Any]]) -> PeerPolicy:
        """From `[[peer]]` tables: name, addresses, sending_applications,
        sending_facilities, message_types, and optionally certificate_names."""
        peers = []
        for number, entry in enumerate(entries, start=1):
            name = str(entry.get("name") or f"peer {number}")
            unknown = set(entry) - {"name", "addresses", "sending_applications",
                                    "sending_facilities", "message_types",
                                    "certificate_names"}
            if unknown:
                raise PeerConfigError(f"peer {name!r}: unknown setting(s) {sorted(unknown)}")
            peers.append(Peer(
                name=name,
                networks=_networks(_required(entry, "addresses", name), name),
                applications=_upper(_required(entry, "sending_applications", name)),
                facilities=_upper(_required(entry, "sending_facilities", name)),
                message_types=_upper(_required(entry, "message_types", name)),
                certificate_names=frozenset(
                    str(n).lower() for n in entry.get("certificate_names") or ()),
            ))
        return cls(peers)

    def admit(self, address: str, certificate_names: Iterable[str] = ()) -> tuple[Peer, ...]:
        """The peers this connection may be (none: close it)."""
        names = list(certificate_names)
        return tuple(p for p in self.peers if p.covers(address, names))

    @staticmethod
    def refusal(peers: Sequence[Peer], claim: Claim | None) -> str | None:
        """Why none of `peers` may send this message (None: one of them may)."""
        if claim is None:
            return "no MSH segment"
        reasons = [peer.refusal(claim) for peer in peers]
        if any(reason is None for reason in reasons):
            return None
        return reasons[0] if reasons else "peer not registered"


def _required(entry: Mapping[str, Any], key: str, name: str) -> list[str]:
    value = entry.get(key)
    if isinstance(value, str):
        value = [value]
    if not value or not all(isinstance(v, str) and v for v in value):
        raise PeerConfigError(f"peer {name!r}: {key} must list at least one value "
                              f"('*' for any)")
    return list(value)


def _upper(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip().upper() for v in values)


def _networks(addresses: Iterable[str], name: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(a, strict=False) for a in addresses)
    except ValueError as exc:
        raise PeerConfigError(f"peer {name!r}: {exc}") from None
