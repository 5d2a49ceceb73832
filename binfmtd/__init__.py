"""binfmtd: keep Nix's platforms and sandbox paths in step with binfmt_misc."""

from __future__ import annotations

__version__ = "0.1.0"
