"""Time-ordered execution ids (UUIDv7, RFC 9562) and random hex ids, from a buffered CSPRNG."""

from __future__ import annotations

import os
import time

_CHUNK = 4096


class _RandomBuffer:
    """`os.urandom` read 4 KiB at a time: one getrandom syscall per ~400 ids instead of one per id (the
    syscall cost ~25 µs per call under load on sandboxed hosts, more than the rest of an id). Bytes are
    used once and then discarded; a forked child drops the buffer so it never repeats its parent's ids."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        pos = self._pos
        if pos + n > len(self._buf):
            self._buf, pos = os.urandom(_CHUNK), 0
        self._pos = pos + n
        return self._buf[pos:pos + n]

    def reset(self) -> None:
        self._buf, self._pos = b"", 0


_random = _RandomBuffer()
os.register_at_fork(after_in_child=_random.reset)


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as lowercase hex (a request id, a token suffix)."""
    return _random.take(nbytes).hex()


def uuid7() -> str:
    """A new UUIDv7 string: 48-bit Unix milliseconds, then random bits; sorts by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(_random.take(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
