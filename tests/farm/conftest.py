"""The farm tier: the host kept as it was. (Its ansible-core venv is the session's,
tests/conftest.py's ansible_venv, built once and cached in /var/cache/binfmtd-tests.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.hostguard import host_kept

FARM_PREFIX = "binfmtd-test-farm-"  # the farm registers nothing on the host: its sentinel only


@pytest.fixture(autouse=True)
def host_unchanged() -> Iterator[None]:
    """Fail when the host's /etc/nix or binfmt_misc differ after a farm test, or when the
    farm's sentinel registered before (a positive control for "nothing flushed") is gone."""
    with host_kept(FARM_PREFIX):
        yield
