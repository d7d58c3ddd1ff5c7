"""mappers.bundle.uuid5_url is exactly uuid.uuid5 in the URL namespace (the fullUrls of
conditional entries derive from it, and the same source must give the same Bundle)."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from mappers.bundle import uuid5_url


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_uuid5_url_is_uuid5(name: str) -> None:
    assert uuid5_url(name) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def test_known_value() -> None:
    # uuid.uuid5(uuid.NAMESPACE_URL, "https://diatabase.org"), computed once by the stdlib
    expected = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://diatabase.org"))
    assert uuid5_url("https://diatabase.org") == expected
    assert uuid.UUID(uuid5_url("x")).version == 5
