"""`diatabase mllp` configuration: a TOML file (`--config`) and the flags that override it.

    [listener]                      # all optional
    host = "0.0.0.0"
    port = 2575
    timezone = "Europe/Paris"       # senders' times without an offset
    max_message_bytes = 16777216
    max_buffered_bytes = 67108864   # all messages in flight together
    max_connections = 256
    max_connections_per_peer = 16   # per peer address
    idle_timeout = 300              # seconds; a silent connection is closed
    message_timeout = 300           # seconds for one message to arrive whole
    workers = 4                     # threads mapping and storing (plus one for large ones)
    large_message_bytes = 1048576

    [tls]                           # optional: TLS; with client_ca, mutual TLS
    certificate = "/etc/diatabase/mllp.pem"
    key = "/etc/diatabase/mllp.key"
    client_ca = "/etc/diatabase/hospital-ca.pem"

    [[peer]]                        # one table per sender (see mappers/mllp/peers.py)
    name = "lab"
    addresses = ["10.1.2.0/24"]
    sending_applications = ["LABO"]
    sending_facilities = ["CHU-DIAB", "1.2.250.1.999.1.1"]
    message_types = ["ORU^R01", "OUL^*"]
    certificate_names = ["lab.chu.example"]   # optional, with mutual TLS
"""

from __future__ import annotations

import ssl
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mappers.mllp import ListenerLimits, PeerConfigError, PeerPolicy, server_tls_context

# [listener] keys and the ListenerLimits fields they set.
_LIMIT_KEYS = {
    "max_message_bytes": "max_frame",
    "max_buffered_bytes": "max_buffered_bytes",
    "max_connections": "max_connections",
    "max_connections_per_peer": "max_connections_per_peer",
    "idle_timeout": "idle_timeout",
    "message_timeout": "frame_timeout",
    "workers": "workers",
    "large_message_bytes": "large_message_bytes",
}
_LISTENER_KEYS = {"host", "port", "timezone", *_LIMIT_KEYS}
_TLS_KEYS = {"certificate", "key", "client_ca"}


class MllpConfigError(ValueError):
    """A configuration that cannot be used; the message says where."""


@dataclass(frozen=True)
class MllpConfig:
    host: str = "127.0.0.1"
    port: int = 2575
    timezone: str | None = None
    limits: ListenerLimits = field(default_factory=ListenerLimits)
    certificate: str | None = None
    key: str | None = None
    client_ca: str | None = None
    peers: list[dict[str, Any]] = field(default_factory=list)

    def policy(self) -> PeerPolicy:
        """The registered peers, or loopback only when none is."""
        if not self.peers:
            return PeerPolicy.loopback_only()
        try:
            return PeerPolicy.from_config(self.peers)
        except PeerConfigError as exc:
            raise MllpConfigError(str(exc)) from None

    def tls(self) -> ssl.SSLContext | None:
        if not self.certificate and not self.key:
            if self.client_ca:
                raise MllpConfigError("a client CA (mutual TLS) needs a certificate and key")
            return None
        if not (self.certificate and self.key):
            raise MllpConfigError("TLS needs both a certificate and a key")
        try:
            return server_tls_context(self.certificate, self.key, self.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise MllpConfigError(f"TLS: {exc}") from None


def load_config(path: str | Path | None, **overrides: Any) -> MllpConfig:
    """The file's settings (if any), then every override that is not None."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise MllpConfigError(f"{path}: {exc}") from None
    unknown = set(data) - {"listener", "tls", "peer"}
    listener = dict(data.get("listener") or {})
    tls = dict(data.get("tls") or {})
    unknown |= {f"listener.{k}" for k in set(listener) - _LISTENER_KEYS}
    unknown |= {f"tls.{k}" for k in set(tls) - _TLS_KEYS}
    if unknown:
        raise MllpConfigError(f"{path}: unknown setting(s) {sorted(unknown)}")
    peers = data.get("peer") or []
    if not isinstance(peers, list):
        raise MllpConfigError(f"{path}: peers are [[peer]] tables")
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _TLS_KEYS:
            tls[key] = value
        elif key in _LISTENER_KEYS:
            listener[key] = value
        else:
            raise MllpConfigError(f"unknown setting {key}")
    limit_values = {_LIMIT_KEYS[k]: v for k, v in listener.items() if k in _LIMIT_KEYS}
    known = {f.name for f in fields(ListenerLimits)}
    assert set(limit_values) <= known
    try:
        limits = replace(ListenerLimits(), **limit_values)
        _check_limits(limits)
        return MllpConfig(
            host=str(listener.get("host", "127.0.0.1")),
            port=int(listener.get("port", 2575)),
            timezone=listener.get("timezone"),
            limits=limits,
            certificate=tls.get("certificate"),
            key=tls.get("key"),
            client_ca=tls.get("client_ca"),
            peers=peers,
        )
    except (TypeError, ValueError) as exc:
        raise MllpConfigError(f"{path or 'flags'}: {exc}") from None


def _check_limits(limits: ListenerLimits) -> None:
    for name in ("max_frame", "max_buffered_bytes", "max_connections",
                 "max_connections_per_peer", "workers", "large_message_bytes"):
        value = getattr(limits, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if limits.max_buffered_bytes < limits.max_frame:
        raise ValueError("max_buffered_bytes must be at least max_message_bytes")
    for name in ("idle_timeout", "frame_timeout"):
        value = getattr(limits, name)
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ValueError(f"{name} must be a positive number of seconds")
