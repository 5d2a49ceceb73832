"""Packaging tests install binfmtd on this host: its service reads the host's binfmt_misc."""

from tests.conftest import host_binfmt as real_binfmt

__all__ = ["real_binfmt"]
