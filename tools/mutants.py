"""`make mutants`: apply each deliberate bug in a scratch copy and name the test that catches it.

A green suite proves something only if it turns red for the bugs it is meant to catch. Each
mutant below is one such bug, applied as an exact text replacement in a scratch copy of the
repository (never in the working tree); the tests it names then run against the copy. A
mutant is caught when pytest reports a failing test; the table names the first one.

The table (MUTANTS) is data, one entry per bug:

    Mutant(file, old, new, bug, tests=UNIT)

- file:  the file to change, relative to the repository root;
- old:   a snippet that must occur in `file` exactly once (else the run stops before any
         test runs: a mutant that no longer applies must be fixed, not skipped);
- new:   the text that replaces it (keep the indentation: it is Python);
- bug:   the deliberate bug in a few words, the table's first column;
- tests: pytest arguments, space-separated: the tests that must catch it (default: the
         unit tier, "tests/unit").

Before the mutants, the same tests run once on an unmutated copy and must pass: a test that
fails anyway catches nothing. The runs set CI=true, so a test whose real part is missing
fails in that first run instead of silently letting a mutant live. Exit status: 0 when every
mutant is caught, 1 when one survives, 2 when the table or the baseline is broken.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
UNIT = "tests/unit"
WRITER = "binfmtd/files.py"
# The strace test first: it is the one that sees O_EXCL and the two fsyncs.
WRITER_TESTS = "tests/integration/test_writer_syscalls.py tests/unit"
FUZZ = "tests/unit/test_entry_fuzz.py"
RULES = "binfmtd/daemon/rules.py"
FOREIGN_TESTS = "tests/cli/test_foreign_conf.py"
RULES_TESTS = "tests/unit/test_daemon_rules.py"
GUARDS = "tests/daemon/test_guards.py"
EDGES = "tests/system/test_nix_daemon_edges.py"
REGISTER_TESTS = "tests/integration/test_register_doctor.py"
PROC = "binfmtd/proc.py"
PROC_TESTS = "tests/unit/test_proc.py"
RUN_TIMEOUT = 1800


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: replace `old` (found exactly once) by `new` in `file`."""

    file: str
    old: str
    new: str
    bug: str
    tests: str = UNIT


MUTANTS: tuple[Mutant, ...] = (
    # The one nix.conf writer (binfmtd/files.py).
    Mutant(WRITER, "fd, temp_name = tempfile.mkstemp(prefix=f\".{target.name}.\", "
           "suffix=TEMP_SUFFIX,\n                                     dir=target.parent)",
           "temp_name = f\"{target.parent}/.{target.name}.tmp{TEMP_SUFFIX}\"\n"
           "    fd = os.open(temp_name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)",
           "writer: temp file without O_EXCL", WRITER_TESTS),
    Mutant(WRITER, "            os.fsync(temp.fileno())\n", "",
           "writer: no fsync of the file", WRITER_TESTS),
    Mutant(WRITER, "    _fsync_folder(target.parent)\n", "",
           "writer: no fsync of the folder", WRITER_TESTS),
    Mutant(WRITER, "        os.replace(temp_name, target)\n",
           "        target.write_bytes(data)\n        os.unlink(temp_name)\n",
           "writer: no rename (writes in place)", WRITER_TESTS),
    Mutant(WRITER, "os.fchmod(temp.fileno(), old.st_mode & 0o7777)",
           "os.fchmod(temp.fileno(), 0o644)", "writer: mode not kept", WRITER_TESTS),
    Mutant(WRITER, "                os.fchown(temp.fileno(), old.st_uid, old.st_gid)\n", "",
           "writer: owner not kept", WRITER_TESTS),
    Mutant(WRITER, "                _copy_selinux_label(target, temp.fileno())\n", "",
           "writer: SELinux label not kept", WRITER_TESTS),
    # The nix.conf editor (binfmtd/nixconf.py): a block moved by hand is only its lines.
    Mutant("binfmtd/nixconf.py",
           "start = begin - 1 if end == len(text) and begin > 0 else begin",
           "start = begin - 1 if begin > 0 else begin",
           "nixconf: a moved block takes the newline before it, gluing its neighbours",
           "tests/unit/test_nixconf.py"),
    # Validation reads the includes where Nix does (binfmtd/asknix.py).
    Mutant("binfmtd/asknix.py",
           '                lines[number] = f"{keyword} {self._staged(where)}"\n',
           "                pass\n", "validate: the copy of nix.conf loses its includes",
           "tests/cli/test_cli.py"),
    # What the docs show is what the commands print, run as shown in a booted Debian.
    Mutant("README.md", "(flags POF), and /etc/binfmt.d/binfmtd-aarch64-linux.conf",
           "(flags OPF), and /etc/binfmt.d/binfmtd-aarch64-linux.conf",
           "docs: README shows what register does not print", "tests/system/test_docs_story.py"),
    # no-color.org (binfmtd/daemon/log.py), on a real terminal.
    Mutant("binfmtd/daemon/log.py", 'return stream.isatty() and not environ.get("NO_COLOR")',
           "return stream.isatty()", "console: colours over NO_COLOR",
           "tests/daemon/test_console.py"),
    Mutant("binfmtd/asknix.py", "names = {**stager.names, folder: str(main_conf.parent)}",
           "names = {**stager.names}", "json: a staged reading shows its temp folder",
           "tests/cli/test_json.py"),
    # Only paths root alone can change go into the sandbox (binfmtd/judge.py).
    Mutant("binfmtd/judge.py", "        if path in untrusted:\n", "        if False:\n",
           "sandbox: an interpreter others may change is declared", REGISTER_TESTS),
    # What is not binfmtd's stays (binfmtd/emulation/registration.py).
    Mutant("binfmtd/emulation/registration.py",
           "    removed = remove_entry(host.binfmt_misc, name)\n",
           "    removed = any([remove_entry(host.binfmt_misc, entry) for entry in "
           "os.listdir(host.binfmt_misc)\n                   if entry not in "
           "('register', 'status')])\n",
           "unregister: every entry goes, not only binfmtd's", REGISTER_TESTS),
    Mutant("binfmtd/emulation/registration.py", "    name = prefix + system\n    replace_file(",
           "    name = prefix + system\n    for other in foreign:\n"
           "        remove_entry(host.binfmt_misc, other)\n    replace_file(",
           "register: replace-handlers removes the foreign entry", REGISTER_TESTS),
    # Never the host's own system (binfmtd/platforms.py): a handler for it bricks the host.
    Mutant("binfmtd/platforms.py", "    if system == host_system:\n        return (f\"{system} is",
           "    if False:\n        return (f\"{system} is",
           "register: the host's own system is registered", REGISTER_TESTS),
    # What an aarch64 host runs itself is the kernel's answer (binfmtd/platforms.py).
    Mutant("binfmtd/platforms.py", "    if not runs_32bit:\n        return ()\n", "",
           "aarch64: a CPU without AArch32 is taken to run armv7l", "tests/unit/test_native.py"),
    # The service may ask the kernel for the 32-bit personality: found by the aarch64 tier.
    Mutant("systemd/binfmtd.service", "# No LockPersonality=:", "LockPersonality=yes\n#",
           "aarch64: the service's personality is locked (it declares no armv7l)",
           "tests/aarch64/test_machine.py::test_a_cpu_with_aarch32_declares_arm32_natively"),
    Mutant("binfmtd/reconcile.py", "            elif found.untrusted:\n",
           "            elif False:\n", "sandbox-paths: a path others may change is declared",
           "tests/unit/test_native.py"),
    # The fuzzer must reach the parser: it fails when too few examples parse.
    Mutant("binfmtd/binfmt.py", "    if len(lines) < 4:\n", "    if len(lines) < 40:\n",
           "fuzz: the parser rejects every entry", FUZZ),
    Mutant(FUZZ, "SAMPLES = samples()",
           "SAMPLES = st.text(max_size=400).map(lambda text: Sample(text, None))",
           "fuzz: the strategy is random text again", FUZZ),
    # A nix.conf that is not binfmtd's to write (binfmtd/conffile.py).
    Mutant("binfmtd/conffile.py", "    if real.startswith(NIX_STORE):\n",
           "    if real.startswith('/nonexistent/'):\n",
           "store: a nix.conf in the Nix store is written through", FOREIGN_TESTS),
    Mutant("binfmtd/conffile.py", "    if not mode & 0o222:\n", "    if False:\n",
           "store: a read-only nix.conf is written anyway", FOREIGN_TESTS),
    # The daemon's timing rules (binfmtd/daemon/rules.py), driven on made-up times.
    *(Mutant(RULES, original, mutated, f"daemon: {name}", RULES_TESTS)
      for original, mutated, name in (
          ("min(now + self.timing.debounce, start + self.timing.max_delay)",
           "min(now, start + self.timing.max_delay)", "debounce 0"),
          ("min(now + self.timing.debounce, start + self.timing.max_delay)",
           "now + self.timing.debounce", "no storm cap"),
          ("max(now, self._last_restart + self.timing.restart_gap)", "now",
           "no restart rate limit"),
          ("self._restart_at = now + delay", "self._restart_at = now", "no back-off"))),
    # The daemon's guards (binfmtd/daemon/watches.py, daemon.py), each made to happen for real.
    Mutant("binfmtd/daemon/watches.py", "            if event.mask & inotify.IN_Q_OVERFLOW:\n",
           "            if False:\n", "daemon: an overflowed event queue is ignored", GUARDS),
    Mutant("binfmtd/daemon/loop.py", "            self.said.failed(error)\n"
           "            self.rules.reconciled(self.clock(), restart=False)\n",
           "            self.said.failed(error)\n",
           "daemon: a failed reconcile is not marked done (it spins)", GUARDS),
    Mutant("binfmtd/daemon/loop.py", "            self.said.failed(error)\n"
           "            self.rules.reconciled(self.clock(), restart=False)\n",
           "            self.said.failed(error)\n"
           "            self.rules.reconciled(self.clock() + 1e9, restart=False)\n",
           "daemon: a failed reconcile is retried decades later", GUARDS),
    Mutant("binfmtd/daemon/loop.py", "        if signum == signal.SIGHUP:\n"
           "            self.reload_requested = True\n",
           "        if signum == signal.SIGHUP:\n            pass\n",
           "daemon: SIGHUP does not reload", GUARDS),
    Mutant("binfmtd/daemon/watches.py",
           "        files = (*self._files, managed) if managed is not None else self._files\n",
           "        files = self._files\n",
           "daemon: the file that holds the block is not watched", GUARDS),
    Mutant("binfmtd/files.py",
           "        if entry.name.startswith(prefix) and _abandoned(entry, prefix, namespace):\n",
           "        if False:\n", "validate: a killed sync's temp folder stays for good",
           "tests/reliability/test_faults.py::"
           "test_syncs_killed_while_nix_validates_leave_no_temp_folder_behind"),
    Mutant("binfmtd/nixdaemon.py",
           "    return daemon.started < mtime - START_TIME_SLACK_SECONDS\n",
           "    return False\n", "status: a nix-daemon that has not read nix.conf is fine",
           "tests/e2e/test_story.py::"
           "test_status_names_a_nix_daemon_that_started_before_the_last_change"),
    # Where binfmtd meets nix-daemon under systemd (a booted container, the .deb inside).
    Mutant("binfmtd/nixtool.py", "(*_unit_folders(), UPSTREAM_PROFILE_BIN, ROOT_PROFILE_BIN)",
           "(UPSTREAM_PROFILE_BIN, ROOT_PROFILE_BIN)",
           "which nix: the folder of nix-daemon's ExecStart is not looked in", EDGES),
    Mutant("binfmtd/nixtool.py", "    return (_program_in(\"nix\", on_path)\n"
           "            or _program_in(\"nix\", (*_unit_folders(), UPSTREAM_PROFILE_BIN, "
           "ROOT_PROFILE_BIN)))\n",
           "    return (_program_in(\"nix\", (*_unit_folders(), UPSTREAM_PROFILE_BIN, "
           "ROOT_PROFILE_BIN))\n            or _program_in(\"nix\", on_path))\n",
           "which nix: the default profile before PATH", EDGES),
    Mutant("binfmtd/nixdaemon.py", "        failed = failed_units(policy.unit)\n",
           "        failed = None\n", "restart: a unit that failed to start counts as restarted",
           EDGES),
    Mutant("binfmtd/config.py", '            return ("systemctl", "try-restart", self.unit)',
           '            return ("systemctl", "restart", self.unit)',
           "restart: a nix-daemon stopped on purpose is started", EDGES),
    # The one way to run a program (binfmtd/proc.py, on subprocess).
    Mutant(PROC, "                stdout, stderr = self._process.communicate(",
           "                self._process.wait = (  # type: ignore[method-assign]\n"
           "                    lambda timeout=None, wait=self._process.wait: wait())\n"
           "                stdout, stderr = self._process.communicate(",
           "proc: a timeout that covers the reading, not the wait", PROC_TESTS),
    Mutant(PROC, "                stderr=subprocess.PIPE, env=env)",
           "                stderr=subprocess.PIPE, env=env, restore_signals=False)",
           "proc: the program keeps Python's ignored SIGPIPE", PROC_TESTS),
    Mutant(PROC, "                stderr=subprocess.PIPE, env=env)",
           "                stderr=subprocess.PIPE, env=env, close_fds=False)",
           "proc: a descriptor handed to binfmtd reaches the program", PROC_TESTS),
    Mutant(PROC, "            except BaseException:  # interrupted: the program must not outlive "
           "the wait\n                self.stop()\n                raise\n", "",
           "proc: an interrupted wait leaves the program running", PROC_TESTS),
)


@dataclass(frozen=True)
class Outcome:
    """What pytest said about one mutant."""

    bug: str
    caught_by: Optional[str]  # the first failing test id; None: the mutant survived
    detail: str  # why it failed (pytest's one-line reason), or why it was not caught
    seconds: float


def tracked_files(repo: Path) -> list[str]:
    """The files git knows or would add (tracked, or new and not ignored): no .venv or .git."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, capture_output=True, check=True, timeout=60,
    ).stdout.decode("utf-8", "surrogateescape")
    return sorted({name for name in listed.split("\0") if name and os.path.lexists(repo / name)})


def copy_tree(repo: Path, files: list[str], scratch: Path, ref: Optional[str]) -> None:
    """The working tree's files as they are now (uncommitted edits included), links as links;
    or, with a ref, the files of that commit (when others are half-way through an edit)."""
    if ref is not None:
        archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=repo,
                                 capture_output=True, check=True, timeout=120).stdout
        subprocess.run(["tar", "-x", "--no-same-permissions", "-C", str(scratch)],
                       input=archive, check=True,
                       timeout=120)
        return
    for name in files:
        destination = scratch / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, destination, follow_symlinks=False)


def read_source(repo: Path, name: str, ref: Optional[str]) -> Optional[str]:
    """A file's text in the working tree or at `ref`; None when it does not exist there."""
    if ref is None:
        path = repo / name
        return path.read_text() if path.is_file() else None
    shown = subprocess.run(["git", "show", f"{ref}:{name}"], cwd=repo, capture_output=True,
                           check=False, timeout=60)
    return shown.stdout.decode() if shown.returncode == 0 else None


def check_table(repo: Path, mutants: tuple[Mutant, ...], ref: Optional[str]) -> list[str]:
    """Why each mutant cannot be applied to the tree under test (empty: all apply)."""
    problems = []
    for mutant in mutants:
        text = read_source(repo, mutant.file, ref)
        if text is None:
            problems.append(f"{mutant.bug}: {mutant.file} does not exist")
            continue
        count = text.count(mutant.old)
        if count != 1:
            problems.append(f"{mutant.bug}: the old snippet occurs {count} times in "
                            f"{mutant.file}, it must occur exactly once: {mutant.old!r}")
    return problems


def as_checkout(scratch: Path) -> None:
    """Make the copy a git checkout whose tree is the copy (mutant included): `make deb`
    builds what git sees, so the booted and packaging tiers test the mutant too."""
    for argv in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=mutants", "-c", "user.email=mutants@localhost",
                  "commit", "-q", "-m", "scratch copy"]):
        subprocess.run(["git", *argv], cwd=scratch, check=True, capture_output=True,
                       timeout=120)


def apply(scratch: Path, mutant: Mutant) -> None:
    path = scratch / mutant.file
    text = path.read_text()
    assert text.count(mutant.old) == 1, mutant.bug
    path.write_text(text.replace(mutant.old, mutant.new))


def test_env(scratch: Path) -> dict[str, str]:
    """The copy first on the import path (ahead of the venv's editable install), CI=true."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BINFMTD_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(scratch), env.get("PYTHONPATH")])),
               PYTHONDONTWRITEBYTECODE="1", CI="true")
    return env


def imported_from(scratch: Path) -> str:
    """Where the copy's interpreter finds binfmtd: must be the copy, or nothing is tested."""
    return subprocess.run(
        [sys.executable, "-c", "import binfmtd; print(binfmtd.__file__)"], cwd=scratch,
        env=test_env(scratch), capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()


def run_tests(scratch: Path, tests: str, stop_at_first: bool) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
            f"--basetemp={scratch / '.pytest-tmp'}", *tests.split()]
    if stop_at_first:
        argv.insert(3, "-x")
    return subprocess.run(argv, cwd=scratch, env=test_env(scratch), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, check=False)


def first_failure(output: str) -> Optional[tuple[str, str]]:
    """(test id, reason) from the first `FAILED id - reason` line of pytest's short summary."""
    for line in output.splitlines():
        for word in ("FAILED ", "ERROR "):
            if line.startswith(word):
                test, _, reason = line[len(word):].partition(" - ")
                return test.strip(), reason.strip()
    return None


@dataclass(frozen=True)
class Source:
    """What each scratch copy is made from: the working tree's files, or a commit."""

    repo: Path
    files: list[str]
    ref: Optional[str]


def in_scratch(source: Source, mutant: Optional[Mutant], tests: str,
               ) -> subprocess.CompletedProcess[str]:
    """Copy, mutate (or not), check the import path, run the tests, delete the copy."""
    scratch = Path(tempfile.mkdtemp(prefix="binfmtd-mutant-"))
    try:
        copy_tree(source.repo, source.files, scratch, source.ref)
        if mutant is not None:
            apply(scratch, mutant)
        as_checkout(scratch)
        where = imported_from(scratch)
        if not where.startswith(str(scratch)):
            raise SystemExit(f"mutants: the tests import binfmtd from {where}, not the copy")
        return run_tests(scratch, tests, stop_at_first=mutant is not None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def try_mutant(source: Source, mutant: Mutant) -> Outcome:
    started = time.monotonic()
    result = in_scratch(source, mutant, mutant.tests)
    seconds = time.monotonic() - started
    failed = first_failure(result.stdout)
    if result.returncode == 1 and failed is not None:
        return Outcome(mutant.bug, failed[0], failed[1], seconds)
    tail = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    return Outcome(mutant.bug, None, f"pytest exit {result.returncode}: {tail}", seconds)


def table(outcomes: list[Outcome]) -> str:
    rows = [("mutant", "caught by", "s")] + [
        (o.bug, o.caught_by or f"NOT CAUGHT ({o.detail})", f"{o.seconds:.0f}") for o in outcomes]
    width = max(len(row[0]) for row in rows)
    lines = [f"{bug:<{width}} | {caught} | {seconds}" for bug, caught, seconds in rows]
    lines.insert(1, "-" * width + "-|-" + "-" * max(len(row[1]) for row in rows) + "-|--")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("match", nargs="?", default="",
                        help="run only the mutants whose description contains this text")
    parser.add_argument("--ref", help="test this commit (e.g. HEAD) instead of the working "
                        "tree, when others are half-way through an edit")
    args = parser.parse_args(argv)
    mutants = tuple(m for m in MUTANTS if args.match in m.bug)
    problems = check_table(REPO, mutants, args.ref)
    if problems or not mutants:
        print("\n".join(problems or [f"mutants: none matches {args.match!r}"]), file=sys.stderr)
        return 2
    source = Source(REPO, [] if args.ref else tracked_files(REPO), args.ref)
    all_tests = " ".join(dict.fromkeys(word for m in mutants for word in m.tests.split()))
    baseline = in_scratch(source, None, all_tests)
    if baseline.returncode != 0:
        print(baseline.stdout[-4000:] + baseline.stderr[-2000:], file=sys.stderr)
        print(f"mutants: the unmutated copy fails `pytest {all_tests}`: fix that first",
              file=sys.stderr)
        return 2
    print(f"unmutated copy: {baseline.stdout.strip().splitlines()[-1]}", flush=True)
    outcomes = []
    for mutant in mutants:
        outcomes.append(try_mutant(source, mutant))
        outcome = outcomes[-1]
        print(f"  {mutant.bug}: {outcome.caught_by or 'NOT CAUGHT'}\n    {outcome.detail[:160]}",
              flush=True)
    print(table(outcomes))
    survivors = [o for o in outcomes if o.caught_by is None]
    print(f"{len(outcomes) - len(survivors)} of {len(outcomes)} mutants caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
