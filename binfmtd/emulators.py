"""Which emulator registers a Nix system, and the binfmt.d line that does it.

The magics and masks are Debian's qemu-user-static lines (i686 and x86_64 from qemu's
own qemu-binfmt-conf.sh, since Debian does not ship its host's line); tests check each
one against the decoder and against what Debian ships.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from .platforms import with_also_runs


class Emulation(NamedTuple):
    """How qemu names a Nix system, and the magic and mask that select its binaries."""

    qemu_arch: str
    magic: str  # hex
    mask: str  # hex
    fedora_package: str


E = Emulation
EMULATIONS: dict[str, Emulation] = with_also_runs({
    "aarch64-linux": E("aarch64", "7f454c460201010000000000000000000200b700",
                       "ffffffffffffff00fffffffffffffffffeffffff", "qemu-user-static-aarch64"),
    "armv7l-linux": E("arm", "7f454c4601010100000000000000000002002800",
                      "ffffffffffffff00fffffffffffffffffeffffff", "qemu-user-static-arm"),
    "i686-linux": E("i386", "7f454c4601010100000000000000000002000300",
                    "fffffffffffefe00fffffffffffffffffeffffff", "qemu-user-static-x86"),
    "x86_64-linux": E("x86_64", "7f454c4602010100000000000000000002003e00",
                      "fffffffffffefe00fffffffffffffffffeffffff", "qemu-user-static-x86"),
    "riscv32-linux": E("riscv32", "7f454c460101010000000000000000000200f300",
                       "ffffffffffffff00fffffffffffffffffeffffff", "qemu-user-static-riscv"),
    "riscv64-linux": E("riscv64", "7f454c460201010000000000000000000200f300",
                       "ffffffffffffff00fffffffffffffffffeffffff", "qemu-user-static-riscv"),
    "powerpc-linux": E("ppc", "7f454c4601020100000000000000000000020014",
                       "fffffffffffffffcfffffffffffffffffffeffff", "qemu-user-static-ppc"),
    "powerpc64-linux": E("ppc64", "7f454c4602020100000000000000000000020015",
                         "fffffffffffffffcfffffffffffffffffffeffff", "qemu-user-static-ppc"),
    "powerpc64le-linux": E("ppc64le", "7f454c4602010100000000000000000002001500",
                           "fffffffffffffffcfffffffffffffffffeffff00", "qemu-user-static-ppc"),
    "mips-linux": E("mips", "7f454c4601020100000000000000000000020008"
                    "0000000000000000000000000000000000000000",
                    "ffffffffffffff00fefffffffffffffffffeffff"
                    "0000000000000000000000000000000000000020", "qemu-user-static-mips"),
    "mipsel-linux": E("mipsel", "7f454c4601010100000000000000000002000800"
                      "0000000000000000000000000000000000",
                      "ffffffffffffff00fefffffffffffffffeffffff"
                      "0000000000000000000000000000000020", "qemu-user-static-mips"),
    "mips64-linux": E("mips64", "7f454c4602020100000000000000000000020008",
                      "ffffffffffffff00fefffffffffffffffffeffff", "qemu-user-static-mips"),
    "mips64el-linux": E("mips64el", "7f454c4602010100000000000000000002000800",
                        "ffffffffffffff00fefffffffffffffffeffffff", "qemu-user-static-mips"),
    "s390x-linux": E("s390x", "7f454c4602020100000000000000000000020016",
                     "fffffffffffffffcfffffffffffffffffffeffff", "qemu-user-static-s390x"),
    "loongarch64-linux": E("loongarch64", "7f454c4602010100000000000000000002000201",
                           "fffffffffffffffc00fffffffffffffffeffffff",
                           "qemu-user-static-loongarch64"),
    "sparc-linux": E("sparc", "7f454c4601020100000000000000000000020002",
                     "fffffffffffffffcfffffffffffffffffffeffff", "qemu-user-static-sparc"),
    "sparc64-linux": E("sparc64", "7f454c460202010000000000000000000002002b",
                       "fffffffffffffffcfffffffffffffffffffeffff", "qemu-user-static-sparc"),
    "m68k-linux": E("m68k", "7f454c4601020100000000000000000000020004",
                    "ffffffffffffff00fffffffffffffffffffeffff", "qemu-user-static-m68k"),
    "microblaze-linux": E("microblaze", "7f454c460102010000000000000000000002baab",
                          "ffffffffffffff00fffffffffffffffffffeffff",
                          "qemu-user-static-microblaze"),
})


class Candidate(NamedTuple):
    """An installed emulator binary and the flags its registration needs."""

    path: str
    flags: str


def candidates(system: str) -> list[Candidate]:
    """Where distributions install a static emulator for `system`, best first.

    Debian's /usr/libexec/qemu-binfmt/*-binfmt-P expects the P flag (argv[0] preserved);
    the plain names must not get it. F makes the kernel open the file at registration,
    so the Nix sandbox needs no path for it.
    """
    arch = EMULATIONS[system].qemu_arch
    return [
        Candidate(f"/usr/libexec/qemu-binfmt/{arch}-binfmt-P", "POF"),
        Candidate(f"/usr/bin/qemu-{arch}-static", "F"),
        Candidate(f"/usr/bin/qemu-{arch}", "F"),
    ]


def escape(hex_bytes: str) -> str:
    """binfmt.d(5) writes bytes as \\xNN, so that `:` and newlines cannot break the line."""
    return "".join(f"\\x{hex_bytes[i:i + 2]}" for i in range(0, len(hex_bytes), 2))


def render_binfmt_line(name: str, system: str, candidate: Candidate) -> str:
    """A registration in the format of binfmt_misc's `register` file and binfmt.d(5)."""
    emulation = EMULATIONS[system]
    return (f":{name}:M::{escape(emulation.magic)}:{escape(emulation.mask)}:"
            f"{candidate.path}:{candidate.flags}")


def render_binfmt_d(name: str, system: str, candidate: Candidate) -> str:
    return (f"# Written by binfmtd register {system}; removed by binfmtd unregister {system}.\n"
            f"{render_binfmt_line(name, system, candidate)}\n")


def emulator_install_hint(system: str) -> Optional[str]:
    """What to install for `system`, or None if binfmtd cannot register it at all."""
    emulation = EMULATIONS.get(system)
    if emulation is None:
        return None
    return (f"install a static qemu for {emulation.qemu_arch}: qemu-user-static on "
            f"Debian/Ubuntu, {emulation.fedora_package} on Fedora")
