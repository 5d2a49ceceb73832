"""The cli tier's sandbox: the real `binfmtd` program against copies of real binfmt_misc
trees in tmp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.kernel import QEMU_BINFMT
from tests.support.parts import DATA

QEMU_STATIC_DIR = Path(QEMU_BINFMT)


@dataclass
class Sandbox:
    """A binfmt_misc copy, an /etc/nix copy, a config, and a restart command that records."""

    root: Path

    @property
    def binfmt_misc(self) -> Path:
        return self.root / "binfmt_misc"

    @property
    def nix_conf(self) -> Path:
        return self.root / "etc-nix" / "nix.conf"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def restarts(self) -> list[str]:
        log = self.root / "restarts.log"
        return log.read_text().splitlines() if log.exists() else []

    def use_registrar(self, name: str) -> None:
        if self.binfmt_misc.exists():
            shutil.rmtree(self.binfmt_misc)
        shutil.copytree(DATA / "binfmt_misc" / name, self.binfmt_misc)

    def environment(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """This machine's environment, binfmtd pointed at the sandbox's copies."""
        return {
            **os.environ,
            "BINFMTD_BINFMT_MISC": str(self.binfmt_misc),
            "BINFMTD_NIX_CONF": str(self.nix_conf),
            "BINFMTD_CONFIG": str(self.config),
            **(env or {}),
        }

    @staticmethod
    def command(*args: str) -> list[str]:
        return [sys.executable, "-m", "binfmtd", *args]

    def run(self, *args: str, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True,
                              env=self.environment(env), timeout=60, check=False)
