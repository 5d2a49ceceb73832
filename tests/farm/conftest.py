"""The farm tier: the session's ansible-core venv (built once by the packaging tier's
fixture, cached in /var/cache/binfmtd-tests) and the host kept as it was."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.packaging.test_ansible import ansible_venv  # noqa: F401  (a fixture, reused)
from tests.support.hostguard import host_kept

FARM_PREFIX = "binfmtd-test-farm-"  # the farm registers nothing on the host: its sentinel only


@pytest.fixture(autouse=True)
def host_unchanged() -> Iterator[None]:
    """Fail when the host's /etc/nix or binfmt_misc differ after a farm test, or when the
    farm's sentinel registered before (a positive control for "nothing flushed") is gone."""
    with host_kept(FARM_PREFIX):
        yield
