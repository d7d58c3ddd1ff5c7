"""MLLP framing: a message is <VT> message <FS><CR> on the wire."""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
# What is kept of a frame cut short: enough for the MSH an AR answer needs.
HEAD_KEPT = 4096
_CUT = "malformed MLLP frame: cut by a new start block"


def frame(message: str | bytes, encoding: str = "utf-8") -> bytes:
    """Wrap one message in an MLLP frame."""
    data = message.encode(encoding) if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class Frame:
    """A deframed message, or the head of a frame that broke (`complete` False, `reason`
    saying why: cut by a new start block, larger than allowed, receiver busy)."""

    data: bytes
    complete: bool
    reason: str | None = None


class Deframer:
    """Incremental MLLP deframer: feed it bytes as they arrive, get whole frames back.

    Lenient where senders are sloppy: the <CR> after <FS> is optional, and a <VT> in the
    middle of a frame starts a new one (the cut frame is returned as incomplete). A frame
    past `max_frame` bytes, or one the owner `cut_short()` (the receiver is out of
    buffer), keeps only its head and is returned incomplete when its end arrives.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._in_frame = False
        self._overflow: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for the frame being received."""
        return len(self._buffer)

    @property
    def in_frame(self) -> bool:
        return self._in_frame

    def cut_short(self, reason: str) -> None:
        """Drop the current frame's body (keep its head) and everything else it sends."""
        if self._in_frame and self._overflow is None:
            del self._buffer[HEAD_KEPT:]
            self._overflow = reason

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        buffer = self._buffer
        position = 0
        length = len(data)
        while position < length:
            if not self._in_frame:
                start = data.find(START_BLOCK, position)
                if start < 0:
                    break  # bytes outside any frame: garbage, skipped
                self._in_frame = True
                self._overflow = None
                buffer.clear()
                position = start + 1
                continue
            end = data.find(END_BLOCK, position)
            restart = data.find(START_BLOCK, position)
            if restart >= 0 and (end < 0 or restart < end):
                self._append(data[position:restart])
                frames.append(Frame(bytes(buffer), False, _CUT))
                buffer.clear()
                self._overflow = None
                position = restart + 1
                continue
            if end < 0:
                self._append(data[position:])
                break
            self._append(data[position:end])
            frames.append(Frame(bytes(buffer), self._overflow is None, self._overflow))
            buffer.clear()
            self._in_frame = False
            position = end + 1
            if position < length and data[position : position + 1] == CARRIAGE_RETURN:
                position += 1
        return frames

    def _append(self, chunk: bytes) -> None:
        if self._overflow is not None:
            return
        if len(self._buffer) + len(chunk) > self.max_frame:
            self._buffer.extend(chunk[: max(0, HEAD_KEPT - len(self._buffer))])
            self._overflow = f"message larger than {self.max_frame} bytes"
            return
        self._buffer.extend(chunk)
