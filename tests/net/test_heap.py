"""tpemu.net.heap: freed C-heap pages go back to the system (issue 16: RSS after 50,000 connections)."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from tpemu.net import heap

pytestmark = pytest.mark.skipif(heap._TRIM is None, reason="not glibc: malloc_trim does not exist here")


def _fragment(blocks: int = 40_000, size: int = 1024) -> None:
    """What a burst of connections leaves: many small C blocks freed, one at the top still used
    (so glibc's own top-of-heap trim cannot give anything back)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    ptrs = [libc.malloc(size) for _ in range(blocks)]
    for p in ptrs:
        ctypes.memset(p, 1, size)  # touched: resident
    for p in ptrs[:-1]:
        libc.free(p)
    _fragment.keep = ptrs[-1]  # type: ignore[attr-defined]


def test_trim_gives_freed_heap_pages_back() -> None:
    _fragment()
    before = heap.rss_bytes()
    assert heap.release_free_memory()
    assert heap.rss_bytes() < before - 20 * 1024 * 1024  # ~40 MiB were free in the heap


def test_trimmer_acts_only_after_growth() -> None:
    trimmer = heap.HeapTrimmer(growth=0.05)
    assert not trimmer.check() and trimmer.trims == 0  # nothing grew since it was made
    _fragment()
    trimmer._level = heap.rss_bytes() // 2  # as if it had trimmed at half of this RSS
    assert trimmer.check() and trimmer.trims == 1
    assert not trimmer.check()  # the new level is the RSS after the trim
