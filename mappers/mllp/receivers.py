"""`bundle_handler`: the usual `receive` for the listener, mapping each message with
`mappers.hl7v2.map_message` and handing the result to the caller's `store`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mappers.hl7v2 import MappedMessage, MappingError, MappingWarning, map_message
from mappers.mllp.server import Outcome, Receive, Received, reject

# store(mapped) -> (extra warnings, patient references); raise MappingError to answer AE.
Store = Callable[[MappedMessage], "tuple[Sequence[MappingWarning], Sequence[str]] | None"]


def bundle_handler(store: Store, **mapping_options) -> Receive:
    """Map each message and pass the result (the Bundle, its warnings, any A40 merges) to
    `store`, in the listener's worker thread.

    Mapping errors are AE (AR for an unusable MSH or unsupported message type or event,
    with the error location in ERR-2), so is any error `store` raises; success is AA, with
    an ERR of severity W for each part of the message not stored (the mapper's warnings
    and those `store` returns). The mapping stops if the sender hangs up meanwhile.
    """

    def receive(received: Received) -> Outcome:
        try:
            mapped = map_message(received.text, cancelled=received.cancelled,
                                 **mapping_options)
        except MappingError as error:
            if error.segment == "MSH":
                raise reject(error) from error
            raise
        more, patients = store(mapped) or ((), ())
        return Outcome("AA", None, tuple(mapped.warnings) + tuple(more), tuple(patients))

    return receive
