"""Ids from the buffered random source: well-formed, unique, and never repeated by a forked child."""

from __future__ import annotations

import os
import time
import uuid

from workflow_engine.ids import random_hex, uuid7


def test_uuid7_strings_are_canonical_version_7() -> None:
    for _ in range(1000):  # crosses several 4 KiB refills of the buffer
        text = uuid7()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_do_not_repeat_across_buffer_refills() -> None:
    ids = {uuid7() for _ in range(5000)}
    hexes = {random_hex(16) for _ in range(5000)}
    assert len(ids) == 5000
    assert len(hexes) == 5000
    assert all(len(h) == 32 and int(h, 16) >= 0 for h in hexes)


def test_a_forked_child_does_not_reuse_the_parents_buffered_bytes() -> None:
    random_hex(1)  # the parent's buffer holds unused bytes now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id and leave without running the parent's cleanup
        os.write(write_end, random_hex(16).encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = random_hex(16)  # what the parent's buffer gives next: the child would have given the same
    assert child != parent


def test_uuid7_carries_the_creation_millisecond_and_random_bits_in_every_field() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert all(before <= uuid.UUID(text).int >> 80 <= after for text in ids)
    assert ids == sorted(ids, key=lambda text: uuid.UUID(text).int >> 80)  # time-ordered
    assert {text[19] for text in ids} == set("89ab")  # the variant digit keeps two random bits
    assert len({text[15:18] for text in ids}) > 1000  # rand_a
