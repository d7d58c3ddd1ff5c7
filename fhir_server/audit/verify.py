"""`diatabase audit verify`: walk the chain and say where it breaks (chain.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fhir_server.audit.chain import GENESIS, link_hash
from fhir_server.audit.events import indexed_fields
from fhir_server.audit.store import AuditStore
from fhir_server.model import jsonio


@dataclass
class VerifyReport:
    records: int = 0
    head: tuple[int, bytes] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: AuditStore) -> VerifyReport:
    """Every problem found, one line each, naming records by number (never their content:
    the output may end up in a ticket)."""
    report = VerifyReport(head=store.head())
    previous_hash, expected = GENESIS, 1
    for record in store.records():
        report.records += 1
        seq = record.seq
        gap = seq != expected
        if gap:
            if seq > expected:
                missing = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
                report.problems.append(f"record {missing} missing (deleted)")
            else:
                report.problems.append(f"record {seq} out of order")
        elif link_hash(previous_hash, seq, record.json) != record.hash:
            report.problems.append(
                f"record {seq} does not match its hash: it was edited, or the record before "
                "it was replaced"
            )
        try:
            event = jsonio.loads(record.json)
        except ValueError:
            report.problems.append(f"record {seq} is not valid JSON")
        else:
            if event.get("id") != str(seq):
                report.problems.append(
                    f"record {seq} holds record {event.get('id')}: records were moved"
                )
            elif indexed_fields(event) != record.indexed:
                report.problems.append(
                    f"record {seq}: its search index does not match its content (edited)"
                )
        previous_hash, expected = record.hash, seq + 1
    head = report.head
    if head is None:
        if report.records:
            report.problems.append("the chain's head is missing (the store's meta was edited)")
    elif head[0] != expected - 1:
        if head[0] > expected - 1:
            report.problems.append(f"records {expected} to {head[0]} missing (the tail was cut)")
        else:
            report.problems.append(f"the chain's head names record {head[0]}, not the last one")
    elif head[1] != previous_hash:
        report.problems.append("the chain's head does not match the last record (edited)")
    return report
