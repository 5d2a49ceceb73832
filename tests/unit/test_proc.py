"""proc runs every program binfmtd starts: what a root daemon needs of it, proven with real
programs (sh, sleep), nothing patched."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Optional

import pytest

from binfmtd.errors import BinfmtdError
from binfmtd.proc import Running, run_program, start_program
from tests.support.waiting import until


def test_both_outputs_and_the_exit_status_come_back() -> None:
    ran = run_program(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (ran.returncode, ran.stdout, ran.stderr) == (3, "out\n", "err\n")


def test_a_failure_is_one_line_with_the_last_thing_the_program_said() -> None:
    with pytest.raises(BinfmtdError) as failed:
        run_program(["sh", "-c", "echo first >&2; echo last >&2; exit 4"])
    assert str(failed.value) == "sh -c echo first >&2; echo last >&2; exit 4 failed (exit 4): last"


def test_large_outputs_on_both_pipes_do_not_deadlock() -> None:
    """A program that fills stderr while binfmtd would still be reading stdout (64 KiB pipes)."""
    ran = run_program(["sh", "-c", "head -c 300000 /dev/zero >&2; head -c 200000 /dev/zero"],
                      timeout=20)
    assert (len(ran.stdout), len(ran.stderr)) == (200000, 300000)


def test_a_program_that_does_not_exist_or_cannot_run_is_named(tmp_path: Path) -> None:
    with pytest.raises(BinfmtdError, match=r"^cannot run binfmtd-no-such-program: not installed$"):
        run_program(["binfmtd-no-such-program"])
    not_executable = tmp_path / "data"
    not_executable.write_text("#!/bin/sh\n")
    with pytest.raises(BinfmtdError, match=r"^cannot run .*/data: Permission denied$"):
        run_program([str(not_executable)])


def started_shell(pidfile: Path) -> tuple[Running, int]:
    """A program that runs until stopped, and its pid (as it wrote it)."""
    running = start_program(["sh", "-c", f"echo $$ > {pidfile}.new; mv {pidfile}.new {pidfile}; "
                                         "exec sleep 30"], timeout=0.5)
    assert until(pidfile.exists, timeout=10)
    return running, int(pidfile.read_text())


def test_a_timeout_kills_and_reaps_the_program(tmp_path: Path) -> None:
    running, pid = started_shell(tmp_path / "pid")
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # control: our child, still running
    with pytest.raises(BinfmtdError, match=r"^sh -c .* did not finish within 0.5 s$"):
        running.wait()
    with pytest.raises(ChildProcessError):  # killed and reaped: no longer our child
        os.waitpid(pid, os.WNOHANG)


def test_stop_ends_a_program_nobody_reads_and_reaps_it(tmp_path: Path) -> None:
    running, pid = started_shell(tmp_path / "pid")
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    running.stop()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    running.stop()  # twice is harmless


def test_the_program_gets_the_default_signals_back_and_no_stray_descriptor() -> None:
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # what Python does to itself
    stray, handed = os.pipe()
    os.set_inheritable(handed, True)  # as a shell may hand binfmtd a descriptor
    listing = ["sh", "-c", "grep SigIgn /proc/$$/status; ls /proc/$$/fd"]
    try:
        control = subprocess.run(listing, close_fds=False, capture_output=True, text=True,
                                 check=True).stdout.split()
        assert str(handed) in control[2:]  # control: a listing that would show it
        ran = run_program(listing).stdout.split()
    finally:
        os.close(stray)
        os.close(handed)
    assert sorted(ran[2:]) == ["0", "1", "2"]
    ignored = int(ran[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))


def test_stdin_is_empty() -> None:
    assert run_program(["cat"], timeout=10).stdout == ""


def test_the_timeout_covers_a_program_that_closes_its_output_and_runs_on(tmp_path: Path) -> None:
    """A restart command that daemonizes badly: its pipes close at once, it keeps running."""
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(BinfmtdError, match=r"did not finish within 1 s$"):
        run_program(["sh", "-c", f"echo $$ > {pidfile}; exec >&- 2>&-; exec sleep 30"],
                    timeout=1)
    assert time.monotonic() - started < 10  # not the 30 s the program would take
    with pytest.raises(ChildProcessError):  # killed and reaped
        os.waitpid(int(pidfile.read_text()), os.WNOHANG)


class Interrupted(Exception):
    """What a signal handler raises in the middle of a wait (as SIGINT raises KeyboardInterrupt)."""


@pytest.fixture
def interrupt_soon() -> Iterator[None]:
    """SIGALRM raises Interrupted 0.3 s into the test."""
    def interrupt(_signum: int, _frame: Optional[FrameType]) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_interrupted_wait_kills_and_reaps_the_program(tmp_path: Path,
                                                         interrupt_soon: None) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(Interrupted):
        run_program(["sh", "-c", f"echo $$ > {pidfile}.new; mv {pidfile}.new {pidfile}; "
                                 "exec sleep 30"], timeout=60)
    assert pidfile.exists()  # control: it had started
    with pytest.raises(ChildProcessError):
        os.waitpid(int(pidfile.read_text()), os.WNOHANG)


def test_the_program_is_found_on_the_path_it_is_given(tmp_path: Path) -> None:
    """`env`'s PATH, not binfmtd's own: systemd's PATH lacks where Nix may live."""
    (tmp_path / "binfmtd-only-here").write_text("#!/bin/sh\necho found\n")
    (tmp_path / "binfmtd-only-here").chmod(0o755)
    with pytest.raises(BinfmtdError, match="not installed"):  # control: not on our PATH
        run_program(["binfmtd-only-here"])
    ran = run_program(["binfmtd-only-here"], env={"PATH": str(tmp_path)})
    assert ran.stdout == "found\n"


def test_binfmtds_own_descriptors_are_left_as_they_were() -> None:
    """The program inherits nothing, and binfmtd's descriptors are not changed for good."""
    kept, handed = os.pipe()
    os.set_inheritable(handed, True)
    try:
        run_program(["true"])
        assert os.get_inheritable(handed)
    finally:
        os.close(kept)
        os.close(handed)
