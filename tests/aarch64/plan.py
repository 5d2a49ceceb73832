"""What the arm64 machine does in its one boot (tests/aarch64/guest.py runs it), and the
registrations aarch64 users have, reproduced with Debian's arm64 qemu-x86_64.

Every step has an id; the tests (test_*.py beside this file) read each step's result by id.
The lines are the ones tests/data/binfmt_misc/ captured (SOURCES.md says where each comes
from); each layout puts Debian's static qemu-x86_64 where the original's emulator lives.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from tests.support.kernel import binfmt_line, entry_name
from tests.support.nix import BUSYBOX_DERIVATION, DERIVATION_FILE, busybox_path, derivation_args

Step = dict[str, Any]

# x86_64 and i386 ELF magic, and the masks the registrars use with them.
X86_64 = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00"
I386 = r"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x03\x00"
# Rosetta's (Apple's documented one): fe over EI_DATA and EI_VERSION.
ROSETTA_MASK = r"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
# FEX's and binfmt-dispatcher's: the same with bytes 7 to 10 zeroed.
FEX_MASK = r"\xff\xff\xff\xff\xff\xfe\xfe\x00\x00\x00\x00\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
# box64's: EI_DATA kept, bytes 8 to 10 zeroed; box32's: the plain i386 mask.
BOX64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
BOX32_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"

QEMU_X86_64 = "/usr/bin/qemu-x86_64"  # Debian trixie's arm64 qemu-user: static-pie
# What the dispatcher stand-in execs: Debian's P wrapper for qemu-x86_64 (a link to it,
# which qemu recognises by its name), so it gets what the kernel gives a P interpreter.
DISPATCHED = "/usr/libexec/qemu-binfmt/x86_64-binfmt-P"
DISPATCHER = "/usr/bin/binfmt-dispatcher"
CONFIG = "/etc/binfmtd/config.toml"


class Layout(NamedTuple):
    """One registrar's registrations on an aarch64 host, reproduced."""

    name: str
    lines: tuple[str, ...]
    emulator: str  # where the original's emulator is; Debian's qemu-x86_64 goes there
    systems: tuple[str, ...]  # what binfmtd must declare for it
    build: bool  # also build x86_64-linux through it
    link: str = ""  # a symlink to `emulator`, registered instead (NixOS's /run/binfmt)
    # A file system of its own mounted where the emulator lives, as the VM's share is:
    # Debian's /run comes from its initramfs noexec, and the kernel refuses an F
    # registration whose interpreter it may not execute (EACCES).
    share: str = ""


def _line(name: str, magic: str, mask: str, interpreter: str, flags: str,
          offset: str = "") -> str:
    """The registrar's line, its fields in the order they appear in it."""
    return binfmt_line(name, interpreter, flags, magic=magic, mask=mask, offset=offset)


LAYOUTS = (
    # Lima: its boot script echoes the line, flags OCF.
    Layout("rosetta-lima",
           (_line("rosetta", X86_64, ROSETTA_MASK, "/mnt/lima-rosetta/rosetta", "OCF"),),
           "/mnt/lima-rosetta/rosetta", ("x86_64-linux",), build=True),
    # NixOS's virtualisation.rosetta: registered as /run/binfmt/rosetta, a link to the mount.
    Layout("rosetta-nixos",
           (_line("rosetta", X86_64, ROSETTA_MASK, "/run/binfmt/rosetta", "CF"),),
           "/run/rosetta/rosetta", ("x86_64-linux",), build=False, link="/run/binfmt/rosetta",
           share="/run/rosetta"),
    # Apple's guide: update-binfmts --credentials yes --fix-binary yes.
    Layout("rosetta-guides",
           (_line("rosetta", X86_64, ROSETTA_MASK, "/media/rosetta/rosetta", "CF", "0"),),
           "/media/rosetta/rosetta", ("x86_64-linux",), build=False),
    # FEX today (/usr/bin/FEX) and before (/usr/bin/FEXInterpreter): systemd-binfmt, POCF.
    Layout("fex",
           (_line("FEX-x86", I386, FEX_MASK, "/usr/bin/FEX", "POCF", "0") + "\n",
            _line("FEX-x86_64", X86_64, FEX_MASK, "/usr/bin/FEX", "POCF", "0") + "\n"),
           "/usr/bin/FEX", ("i686-linux", "x86_64-linux"), build=False),
    Layout("fex-interpreter",
           (_line("FEX-x86_64", X86_64, FEX_MASK, "/usr/bin/FEXInterpreter", "POCF", "0")
            + "\n",),
           "/usr/bin/FEXInterpreter", ("x86_64-linux",), build=False),
    # box64's binfmt.d file: named x86_64, no flags; built with box32, its line too.
    Layout("box64",
           (_line("x86_64", X86_64, BOX64_MASK, "/usr/bin/box64", "") + "\n",
            _line("box32", I386, BOX32_MASK, "/usr/bin/box64", "") + "\n"),
           "/usr/bin/box64", ("i686-linux", "x86_64-linux"), build=True),
)
DISPATCHER_LINE = _line("binfmt-dispatcher-x86_64", X86_64, FEX_MASK, DISPATCHER, "POCF",
                        "0") + "\n"


def debian_line(tree: Path, target: str) -> str:
    """Debian's own binfmt.d line for qemu-`target` (qemu-user-binfmt, in the arm64 tree)."""
    return (tree / f"usr/lib/binfmt.d/qemu-{target}.conf").read_text().strip()


# --- steps --------------------------------------------------------------------------------


def build(step: str, system: str, busybox: str) -> Step:
    """A non-root user's nix-build of the one busybox derivation (tests/support/nix.py)
    for `system`, `busybox` (a payload file) its builder; a new output path every time."""
    return {"id": step, "do": "build", "system": system, "busybox": busybox,
            "busybox_path": busybox_path(system), "file": DERIVATION_FILE,
            "derivation": BUSYBOX_DERIVATION, "args": derivation_args(system, step)}


def await_(step: str, declared: tuple[str, ...] = (), undeclared: tuple[str, ...] = (),
           restarted: bool = True, timeout: float = 90) -> Step:
    """Until binfmtd's block declares `declared` and not `undeclared`, and nix-daemon was
    restarted since the last mark."""
    return {"id": step, "do": "await", "declared": list(declared),
            "undeclared": list(undeclared), "restarted": restarted, "timeout": timeout}


def story(system: str, line: str, busybox: str) -> list[Step]:
    """Fails before, works once binfmtd followed the registration, fails after removal."""
    name = entry_name(line)
    return [
        build(f"{system}-before", system, busybox),
        {"id": f"{system}-mark", "do": "mark"},  # the failed build started nix-daemon
        {"id": f"{system}-register", "do": "register", "line": line},
        await_(f"{system}-declared", declared=(system,)),
        build(f"{system}-after", system, busybox),
        {"id": f"{system}-status", "do": "status"},
        {"id": f"{system}-mark-again", "do": "mark"},
        {"id": f"{system}-unregister", "do": "unregister", "name": name},
        await_(f"{system}-undeclared", undeclared=(system,)),
        build(f"{system}-removed", system, busybox),
    ]


def layout(case: Layout, busybox: str) -> list[Step]:
    """Each layout alone: its emulator in place, its lines registered, what binfmtd
    declares, a build where the layout says so, and everything taken back."""
    steps: list[Step] = []
    if case.share:
        steps.append({"id": f"{case.name}-share", "do": "run", "argv": [
            "sh", "-c", f"mkdir -p {case.share} && mount -t tmpfs -o mode=755 tmpfs {case.share}"]})
    steps.append({"id": f"{case.name}-emulator", "do": "install", "source": QEMU_X86_64,
                  "target": case.emulator})
    if case.link:
        steps.append({"id": f"{case.name}-link", "do": "install", "source": case.emulator,
                      "target": case.link, "symlink": True})
    steps.append({"id": f"{case.name}-mark", "do": "mark"})
    steps += [{"id": f"{case.name}-register-{entry_name(line)}", "do": "register", "line": line}
              for line in case.lines]
    steps += [await_(f"{case.name}-declared", declared=case.systems),
              {"id": f"{case.name}-status", "do": "status"}]
    if case.build:
        steps.append(build(f"{case.name}-build", "x86_64-linux", busybox))
    steps.append({"id": f"{case.name}-mark-again", "do": "mark"})
    steps += [{"id": f"{case.name}-unregister-{entry_name(line)}", "do": "unregister",
               "name": entry_name(line)} for line in case.lines]
    steps.append(await_(f"{case.name}-undeclared", undeclared=case.systems))
    return steps


def dispatcher(busybox: str, stand_in: str) -> list[Step]:
    """Fedora Asahi's binfmt-dispatcher line, its interpreter a stand-in that execs qemu:
    status explains it, a build fails until config.toml's sandbox-paths names what the
    dispatcher runs, then works."""
    paths = f'sandbox-paths = {{ "x86_64-linux" = ["{DISPATCHED}", "{QEMU_X86_64}"] }}\n'
    return [
        {"id": "dispatcher-install", "do": "install", "source": stand_in, "target": DISPATCHER},
        {"id": "dispatcher-mark", "do": "mark"},
        {"id": "dispatcher-register", "do": "register", "line": DISPATCHER_LINE},
        await_("dispatcher-declared", declared=("x86_64-linux",)),
        {"id": "dispatcher-status", "do": "status"},
        build("dispatcher-build-blind", "x86_64-linux", busybox),
        {"id": "dispatcher-config-before", "do": "read", "path": CONFIG},
        {"id": "dispatcher-mark-config", "do": "mark"},
        {"id": "dispatcher-config", "do": "run",
         "argv": ["sh", "-c", f"printf '%s' '{paths}' >> {CONFIG} && "
                              "systemctl reload binfmtd.service"]},
        {**await_("dispatcher-paths", declared=("x86_64-linux",)), "contains": [QEMU_X86_64]},
        {"id": "dispatcher-status-paths", "do": "status"},
        build("dispatcher-build", "x86_64-linux", busybox),
        {"id": "dispatcher-mark-again", "do": "mark"},
        {"id": "dispatcher-unregister", "do": "unregister",
         "name": entry_name(DISPATCHER_LINE)},
        await_("dispatcher-undeclared", undeclared=("x86_64-linux",)),
    ]


def boot_plan(tree: Path, busyboxes: dict[str, str], stand_in: str) -> list[Step]:
    """The whole plan of the machine with AArch32: the facts, the 32-bit answer, the story
    for x86_64-linux and i686-linux through Debian's lines, every layout, the dispatcher."""
    amd64 = busyboxes["x86_64-linux"]
    steps: list[Step] = [{"id": "facts", "do": "facts"}, {"id": "status-boot", "do": "status"}]
    steps += story("x86_64-linux", debian_line(tree, "x86_64"), amd64)
    steps += story("i686-linux", debian_line(tree, "i386"), busyboxes["i686-linux"])
    for case in LAYOUTS:
        steps += layout(case, amd64)
    steps += dispatcher(amd64, stand_in)
    return steps


def status_plan() -> list[Step]:
    """The machine without AArch32: what it runs natively, nothing else."""
    return [{"id": "facts", "do": "facts"}, {"id": "status-boot", "do": "status"}]
