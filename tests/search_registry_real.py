"""The real search parameter registry for the parser tests, plus one custom parameter.

`SearchParamRegistry.default()` holds every official R4 parameter; the one addition is a
custom SearchParameter (as the server loads them at run time): a string `birthdate` on
Device, so that `subject.birthdate` means a date on Patient but a string on Device, which
the ambiguous-chain tests need.
"""

from __future__ import annotations

from fhir_server.search.registry import SearchParamRegistry

DEVICE_BIRTHDATE = {
    "resourceType": "SearchParameter",
    "url": "https://diatabase.org/fhir/SearchParameter/test-device-birthdate",
    "name": "DeviceBirthdate",
    "status": "active",
    "code": "birthdate",
    "base": ["Device"],
    "type": "string",
    "expression": "Device.manufacturer",
    "description": "Test only: a string parameter named like Patient.birthdate",
}


def real_registry() -> SearchParamRegistry:
    registry = SearchParamRegistry.default()
    registry.add(DEVICE_BIRTHDATE)
    return registry


REGISTRY = real_registry()
