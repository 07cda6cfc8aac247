"""Fixtures for the coordination tests: a key layout under the test's fresh etcd prefix and a core on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scheduler_node.coordination import EtcdCoordinator, KeyLayout
from shardwheel.embedded import EmbeddedEtcd

TTL_S = 2  # etcd's minimum lease TTL with the default election timeout


@pytest.fixture
def layout(etcd_prefix: str) -> KeyLayout:
    return KeyLayout("test", prefix=etcd_prefix)


@pytest.fixture
def coord(etcd_server: EmbeddedEtcd, layout: KeyLayout) -> Iterator[EtcdCoordinator]:
    with EtcdCoordinator(etcd_server.endpoint, layout, timeout=2.0) as c:
        yield c


@pytest.fixture
def other(etcd_server: EmbeddedEtcd, layout: KeyLayout) -> Iterator[EtcdCoordinator]:
    """A second node's coordinator: its own client and connection."""
    with EtcdCoordinator(etcd_server.endpoint, layout, timeout=2.0) as c:
        yield c
