"""doctor's generated programs really run: each one under its own qemu, exit status 42."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from binfmtd.emulation.elfgen import EXIT_CODE, MACHINES, exit_program
from binfmtd.emulators import EMULATIONS
from tests.support.parts import require

QEMU_ARCH = {system: emulation.qemu_arch for system, emulation in EMULATIONS.items()}


@pytest.mark.parametrize("system", sorted(MACHINES))
def test_the_program_exits_42_under_qemu(system: str, tmp_path: Path) -> None:
    qemu = Path(f"/usr/bin/qemu-{QEMU_ARCH[system]}-static")
    require(qemu.exists(), f"{qemu} missing (apt-get install qemu-user-static)")
    program = tmp_path / "program"
    program.write_bytes(exit_program(system))
    os.chmod(program, 0o755)
    result = subprocess.run([str(qemu), str(program)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == EXIT_CODE, result.stderr
