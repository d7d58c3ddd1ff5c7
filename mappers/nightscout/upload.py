"""One upload (an array of Nightscout documents) as one transaction Bundle.

Every resource is a conditional create on its Nightscout identifier, so a re-sent batch
creates nothing; the uploaders named by the documents become Devices (conditional creates
too) that the resources reference. A document that cannot be stored is reported in
`rejected` with its index and the reason; the others are stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mappers.bundle import TransactionBuilder, identifier_query
from mappers.device_csv.resources import DeviceInfo

from .common import uploader_resource


@dataclass
class Upload:
    site: str
    patient_ref: str
    builder: TransactionBuilder = field(default_factory=TransactionBuilder)
    documents: list[dict[str, Any]] = field(default_factory=list)  # as answered, with _id
    rejected: list[tuple[int, str]] = field(default_factory=list)
    _devices: dict[DeviceInfo, str] = field(default_factory=dict)
    _keys: set[str] = field(default_factory=set)

    def device(self, device: DeviceInfo) -> str:
        """The fullUrl of the uploader's Device entry (added once)."""
        found = self._devices.get(device)
        if found is None:
            system, value = device.identifier()
            found = self.builder.create(uploader_resource(device, self.patient_ref),
                                        identifier_query(system, value))
            self._devices[device] = found
        return found

    def first(self, key: str) -> bool:
        """False for a document whose key came earlier in the same upload (stored once)."""
        if key in self._keys:
            return False
        self._keys.add(key)
        return True

    def add(self, resource: dict[str, Any], system: str) -> None:
        value = resource["identifier"][0]["value"]
        self.builder.create(resource, identifier_query(system, value))

    def bundle(self) -> dict[str, Any]:
        return self.builder.bundle()
