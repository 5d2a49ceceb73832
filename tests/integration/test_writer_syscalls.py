"""The nix.conf writer's system calls, as the kernel sees them, in the order it sees them.

A crash test cannot prove atomic replacement: a kill -9 lands in a microsecond window, and
a plain `open(path, "w")` writer survived 600 of them. What makes the write safe is a
sequence of calls, so this test reads that sequence with strace while the real
`binfmtd sync` runs, and asserts it on the temp file's fd and the folder's fd:

    openat(temp, O_CREAT|O_EXCL) -> write()s -> fchmod/fchown -> fsync(temp)
    -> rename(temp, nix.conf) -> openat(folder) -> fsync(folder)

A writer without O_EXCL, without either fsync, or writing in place fails here.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.support.parts import DATA, require

QEMU_STATIC_DIR = Path("/usr/libexec/qemu-binfmt")
# `?` lets strace ignore a name the architecture lacks (aarch64 has no open/rename).
TRACED = ("openat", "?open", "?creat", "write", "writev", "pwrite64", "fsync", "fdatasync",
          "?rename", "?renameat", "renameat2", "fchmod", "fchown", "fsetxattr", "close")
WRITES = frozenset({"write", "writev", "pwrite64"})
RENAMES = frozenset({"rename", "renameat", "renameat2"})
OPENS = frozenset({"open", "openat", "creat"})
USER_TEXT = "# the user's own file\nsandbox = true\n"

# `1234  name(args) = ret ...`; `<unfinished ...>` and `<... name resumed>` when -f interleaves.
LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<rest>.*)$")
RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<tail>.*)$")
UNFINISHED = " <unfinished ...>"


@dataclass(frozen=True)
class Call:
    """One completed system call: who made it, its arguments as strace printed them."""

    index: int
    pid: int
    name: str
    args: tuple[str, ...]
    result: Optional[int]


@dataclass(frozen=True)
class FileOp:
    """A call on a file, with the file the fd named at that moment."""

    index: int
    name: str
    path: str
    flags: str = ""  # an open's flags
    target: str = ""  # a rename's new name
    result: int = 0


def parse_strace(text: str) -> list[Call]:
    """Every completed call, unfinished/resumed halves joined, in completion order."""
    calls: list[Call] = []
    pending: dict[int, str] = {}
    for line in text.splitlines():
        matched = LINE.match(line)
        if matched is None:
            continue
        pid, rest = int(matched["pid"]), matched["rest"]
        if rest.endswith(UNFINISHED):
            pending[pid] = rest[: -len(UNFINISHED)]
            continue
        resumed = RESUMED.match(rest)
        if resumed is not None:
            rest = pending.pop(pid, resumed["name"] + "(") + resumed["tail"]
        call = _parse_call(len(calls), pid, rest)
        if call is not None:
            calls.append(call)
    return calls


def _parse_call(index: int, pid: int, rest: str) -> Optional[Call]:
    """`name(a, "b, c", d) = 3` -> Call; signals, exits and such -> None."""
    name_match = re.match(r"(\w+)\(", rest)
    if name_match is None:
        return None
    args, end = _split_args(rest, name_match.end())
    result = re.match(r"\s*=\s*(-?\d+|\?)", rest[end:])
    if result is None:
        return None
    value = None if result[1] == "?" else int(result[1])
    return Call(index, pid, name_match[1], tuple(args), value)


def _split_args(text: str, start: int) -> tuple[list[str], int]:
    """Split at top-level commas up to the closing parenthesis; quotes and brackets nest."""
    args: list[str] = []
    depth, quoted, escaped = 0, False, False
    current = start
    for position in range(start, len(text)):
        char = text[position]
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            continue
        if char == '"':
            quoted = True
        elif char in "([{":
            depth += 1
        elif char in "}]" or (char == ")" and depth > 0):
            depth -= 1
        elif char == ")":
            args.append(text[current:position].strip())
            return [arg for arg in args if arg], position + 1
        elif char == "," and depth == 0:
            args.append(text[current:position].strip())
            current = position + 1
    return args, len(text)


def c_string(arg: str) -> str:
    """strace's quoted, C-escaped string -> the path it names."""
    literal = arg[: arg.rindex('"') + 1]
    value = ast.literal_eval("b" + literal)
    assert isinstance(value, bytes), arg
    return value.decode("utf-8", "surrogateescape")


def file_ops(calls: list[Call]) -> list[FileOp]:
    """The calls that name a file, each with its path: fds are followed per process.

    An fd number means a file only between the openat that returned it and its close, and
    only in the process that opened it (sync is single-threaded; children are nix).
    """
    fds: dict[tuple[int, int], str] = {}
    ops: list[FileOp] = []
    for call in calls:
        if call.result is None or call.result < 0:
            continue
        if call.name in OPENS:
            path_arg = call.args[0] if call.name in ("open", "creat") else call.args[1]
            path = os.path.normpath(c_string(path_arg))
            flags = "O_WRONLY|O_CREAT|O_TRUNC" if call.name == "creat" else (
                call.args[1] if call.name == "open" else call.args[2])
            fds[(call.pid, call.result)] = path
            ops.append(FileOp(call.index, "open", path, flags))
        elif call.name in RENAMES:
            paths = [c_string(arg) for arg in call.args if arg.startswith('"')]
            ops.append(FileOp(call.index, "rename", os.path.normpath(paths[0]),
                              target=os.path.normpath(paths[1])))
        elif call.args and call.args[0].isdigit():
            key = (call.pid, int(call.args[0]))
            if key in fds:
                ops.append(FileOp(call.index, call.name, fds[key], result=call.result))
            if call.name == "close":
                fds.pop(key, None)
    return ops


def trace_sync(tmp_path: Path, conf: Path) -> tuple[str, list[FileOp]]:
    """Run the real `binfmtd sync` under strace -f; its output and the file calls."""
    binfmt_misc = tmp_path / "binfmt_misc"
    shutil.copytree(DATA / "binfmt_misc" / "debian", binfmt_misc)
    config = tmp_path / "config.toml"
    config.write_text("")
    log = tmp_path / "strace.log"
    traced = subprocess.run(
        ["strace", "-f", "-qq", "-s", "65535", "-e", "trace=" + ",".join(TRACED),
         "-o", str(log), sys.executable, "-m", "binfmtd", "--config", str(config),
         "--binfmt-misc", str(binfmt_misc), "--nix-conf", str(conf), "sync", "--no-restart"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert traced.returncode == 0, traced.stdout + traced.stderr
    assert "updated" in traced.stdout, traced.stdout  # a write happened: there is a sequence
    return traced.stdout, file_ops(parse_strace(log.read_text("utf-8", "surrogateescape")))


def first(ops: list[FileOp], name: str, path: str, after: int = -1) -> FileOp:
    """The first `name` call on `path` after index `after`; fails with the calls seen."""
    for op in ops:
        if op.index > after and op.name == name and op.path == path:
            return op
    seen = "\n".join(f"  {op.name} {op.path} {op.flags}{op.target}"
                     for op in ops if op.index > after)
    raise AssertionError(f"no {name} on {path} after call {after}; calls seen:\n{seen}")


@pytest.fixture
def strace() -> None:
    require(shutil.which("strace") is not None, "strace is not installed (apt-get install strace)")
    require(QEMU_STATIC_DIR.is_dir(), "qemu-user-static is not installed")


@pytest.mark.usefixtures("strace")
@pytest.mark.parametrize("existing", [True, False], ids=["replace", "create"])
def test_the_writer_creates_syncs_renames_and_syncs_the_folder_in_order(
    tmp_path: Path, existing: bool
) -> None:
    folder = tmp_path / "etc-nix"
    folder.mkdir()
    conf = folder / "nix.conf"
    if existing:
        conf.write_text(USER_TEXT)
    _, ops = trace_sync(tmp_path, conf)
    folder_path, conf_path = os.path.realpath(folder), os.path.realpath(conf)

    renames = [op for op in ops if op.name == "rename" and op.target == conf_path]
    assert len(renames) == 1, f"nix.conf must be replaced by one rename, saw {renames}"
    rename = renames[0]
    temp = rename.path
    assert os.path.dirname(temp) == folder_path  # same folder: rename is atomic

    opened = first(ops, "open", temp)
    assert {"O_CREAT", "O_EXCL"} <= set(opened.flags.split("|")), opened.flags
    writes = [op for op in ops if op.path == temp and op.name in WRITES]
    assert sum(op.result for op in writes) == conf.stat().st_size, "the temp file holds it all"
    synced = first(ops, "fsync", temp, after=writes[-1].index)
    assert synced.index < rename.index, "the temp file must be fsynced before the rename"
    for metadata in ("fchmod",) + (("fchown",) if existing else ()):
        assert opened.index < first(ops, metadata, temp).index < synced.index, metadata
    folder_open = first(ops, "open", folder_path, after=rename.index)
    assert "O_DIRECTORY" in folder_open.flags.split("|")
    first(ops, "fsync", folder_path, after=folder_open.index)

    in_place = [op for op in ops if op.name == "open" and op.path == conf_path
                and ({"O_WRONLY", "O_RDWR", "O_TRUNC"} & set(op.flags.split("|")))]
    assert in_place == [], "nix.conf itself was opened for writing"
    assert conf.read_text().startswith(USER_TEXT if existing else "# BEGIN binfmtd")
    assert "extra-extra-platforms = aarch64-linux" in conf.read_text()
    assert sorted(os.listdir(folder)) == ["nix.conf"]  # the temp file is gone


def test_the_parser_follows_fds_through_unfinished_calls_and_reuse() -> None:
    """The trace reader itself: -f interleaving, fd reuse, paths with commas and quotes."""
    log = "\n".join([
        '7 openat(AT_FDCWD, "/d/.n.x, \\"y\\"", O_RDWR|O_CREAT|O_EXCL, 0600) = 3',
        '8 openat(AT_FDCWD, "/other", O_RDONLY) = 3',
        '7 write(3, "a) = 9, (b", 10 <unfinished ...>',
        "8 close(3) = 0",
        "7 <... write resumed>) = 10",
        "7 fsync(3) = 0",
        "7 close(3) = 0",
        '7 rename("/d/.n.x, \\"y\\"", "/d/n") = 0',
        '7 openat(AT_FDCWD, "/d", O_RDONLY|O_CLOEXEC|O_DIRECTORY) = 3',
        "7 fsync(3) = 0",
        "7 +++ exited with 0 +++",
    ])
    ops = file_ops(parse_strace(log))
    temp = '/d/.n.x, "y"'
    assert [(op.name, op.path) for op in ops] == [
        ("open", temp), ("open", "/other"), ("close", "/other"), ("write", temp),
        ("fsync", temp), ("close", temp), ("rename", temp), ("open", "/d"), ("fsync", "/d"),
    ]
    assert ops[6].target == "/d/n"
