"""Stalls of the disk under PostgreSQL's data: spans in which the device completed no write while I/O was in flight.

A durable commit waits for its WAL flush, so when the device stops completing writes for 250 ms (this machine's
virtual disk does, a few times a minute) every commit in that window waits for it, whatever the scheduler does. A
bench that reports a latency tail reports these beside it, read from ``/proc/diskstats`` (Linux; elsewhere the
watch records nothing)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = ["DiskSample", "DiskWatch", "write_stalls"]


class DiskSample(NamedTuple):
    at: float  # seconds (any clock; the stalls come back on it)
    writes_done: int  # diskstats field 8: writes completed
    in_flight: int  # diskstats field 12: I/Os currently in progress


def write_stalls(samples: Iterable[DiskSample], at_least_s: float) -> list[tuple[float, float]]:
    """(start, seconds) of each span of at least ``at_least_s`` with I/O in flight and no write completed. A
    span runs from the last sample that saw a write complete to the first that saw one again (or I/O drain)."""
    stalls: list[tuple[float, float]] = []
    since: float | None = None  # the last sample with progress, while in flight and stuck
    prev: DiskSample | None = None
    for s in samples:
        if prev is not None:
            stuck = s.writes_done == prev.writes_done and s.in_flight > 0 and prev.in_flight > 0
            if stuck and since is None:
                since = prev.at
            elif not stuck and since is not None:
                if s.at - since >= at_least_s:
                    stalls.append((since, s.at - since))
                since = None
        prev = s
    if since is not None and prev is not None and prev.at - since >= at_least_s:
        stalls.append((since, prev.at - since))
    return stalls


def _device_of(path: Path) -> tuple[int, int]:
    dev = os.stat(path).st_dev
    return os.major(dev), os.minor(dev)


def _read(device: tuple[int, int]) -> DiskSample | None:
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if (int(fields[0]), int(fields[1])) == device:
                    return DiskSample(time.time(), int(fields[7]), int(fields[11]))
    except (OSError, ValueError, IndexError):
        pass
    return None


class DiskWatch:
    """Samples the device holding ``path`` every ``every_s`` in a thread while entered."""

    def __init__(self, path: Path, every_s: float = 0.01) -> None:
        self._device = _device_of(path)
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-watch", daemon=True)
        self.samples: list[DiskSample] = []

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            if (s := _read(self._device)) is not None:
                self.samples.append(s)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def stalls(self, at_least_s: float = 0.1) -> list[tuple[float, float]]:
        return write_stalls(self.samples, at_least_s)
