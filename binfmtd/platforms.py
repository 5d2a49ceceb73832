"""Map an ELF magic (the bytes a binfmt_misc handler matches) to a Nix system double.

The system is read from the registered magic itself: ELF class (EI_CLASS, byte 4),
data encoding (EI_DATA, byte 5) and e_machine (bytes 18-19, in the file's byte order).
A handler's name says nothing reliable: docker, Fedora and Rosetta all name theirs
differently, and an administrator may call one anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional, TypeVar, Union

T = TypeVar("T")

ELF_SIGNATURE = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
# e_flags bit that marks the MIPS n32 ABI; qemu's o32 masks require it clear.
EF_MIPS_ABI2 = 0x20

EM_SPARC = 2
EM_386 = 3
EM_68K = 4
EM_MIPS = 8
EM_PPC = 20
EM_PPC64 = 21
EM_S390 = 22
EM_ARM = 40
EM_SPARC32PLUS = 18
EM_SPARCV9 = 43
EM_X86_64 = 62
EM_AARCH64 = 183
EM_MICROBLAZE = 189
# The number MicroBlaze used before it had an official one; qemu still registers it.
EM_MICROBLAZE_OLD = 0xBAAB
EM_RISCV = 243
EM_LOONGARCH = 258

LSB, MSB = ELFDATA2LSB, ELFDATA2MSB
C32, C64 = ELFCLASS32, ELFCLASS64

# (e_machine, class, data) -> the Nix system that runs such binaries.
# Covers what Nix knows as a Linux system double and qemu-user can emulate.
NIX_SYSTEMS: dict[tuple[int, int, int], str] = {
    (EM_386, C32, LSB): "i686-linux",
    (EM_X86_64, C64, LSB): "x86_64-linux",
    (EM_AARCH64, C64, LSB): "aarch64-linux",
    (EM_ARM, C32, LSB): "armv7l-linux",
    (EM_RISCV, C32, LSB): "riscv32-linux",
    (EM_RISCV, C64, LSB): "riscv64-linux",
    (EM_PPC, C32, MSB): "powerpc-linux",
    (EM_PPC64, C64, MSB): "powerpc64-linux",
    (EM_PPC64, C64, LSB): "powerpc64le-linux",
    (EM_MIPS, C32, MSB): "mips-linux",
    (EM_MIPS, C32, LSB): "mipsel-linux",
    (EM_MIPS, C64, MSB): "mips64-linux",
    (EM_MIPS, C64, LSB): "mips64el-linux",
    (EM_S390, C32, MSB): "s390-linux",
    (EM_S390, C64, MSB): "s390x-linux",
    (EM_LOONGARCH, C64, LSB): "loongarch64-linux",
    (EM_SPARC, C32, MSB): "sparc-linux",
    (EM_SPARCV9, C64, MSB): "sparc64-linux",
    (EM_68K, C32, MSB): "m68k-linux",
    (EM_MICROBLAZE, C32, MSB): "microblaze-linux",
    (EM_MICROBLAZE, C32, LSB): "microblazeel-linux",
    (EM_MICROBLAZE_OLD, C32, MSB): "microblaze-linux",
    (EM_MICROBLAZE_OLD, C32, LSB): "microblazeel-linux",
}

# Names for machines that Nix has no system for, so that a note can say what it is.
MACHINE_NAMES: dict[int, str] = {
    EM_SPARC32PLUS: "SPARC32+",
    EM_ARM: "ARM",
    EM_AARCH64: "AArch64",
    EM_MIPS: "MIPS",
    EM_PPC64: "PowerPC64",
    EM_RISCV: "RISC-V",
    EM_S390: "S/390",
    EM_X86_64: "x86-64",
    0x9026: "Alpha",
    15: "PA-RISC (hppa)",
    42: "SuperH (sh4)",
    76: "CRIS",
    94: "Xtensa",
    164: "Hexagon",
    92: "OpenRISC",
}

# uname -m -> Nix system, for finding the host's own system.
HOST_SYSTEMS: dict[str, str] = {
    "x86_64": "x86_64-linux",
    "amd64": "x86_64-linux",
    "i386": "i686-linux",
    "i586": "i686-linux",
    "i686": "i686-linux",
    "aarch64": "aarch64-linux",
    "arm64": "aarch64-linux",
    "armv6l": "armv6l-linux",
    "armv7l": "armv7l-linux",
    "armv8l": "armv7l-linux",
    "riscv64": "riscv64-linux",
    "ppc64": "powerpc64-linux",
    "ppc64le": "powerpc64le-linux",
    "s390x": "s390x-linux",
    "loongarch64": "loongarch64-linux",
    "mips64": "mips64-linux",
}


class ElfIdentity(NamedTuple):
    """What an ELF magic says about the binaries it matches."""

    elf_class: int
    data: int
    machine: int
    mips_n32: bool = False

    def describe(self) -> str:
        bits = {C32: "32-bit", C64: "64-bit"}.get(self.elf_class, f"class {self.elf_class}")
        order = {LSB: "little-endian", MSB: "big-endian"}.get(self.data, f"data {self.data}")
        name = MACHINE_NAMES.get(self.machine, f"e_machine {self.machine}")
        abi = " n32" if self.mips_n32 else ""
        return f"{bits} {order} {name}{abi}"


class NotElf(NamedTuple):
    """The magic is not an ELF header (a .pyc, LLVM bitcode, a Windows PE...)."""

    reason: str


def decode_magic(magic: bytes, mask: Optional[bytes], offset: int) -> Union[ElfIdentity, NotElf]:
    """Read class, byte order and machine from an ELF magic.

    The bytes are read from the magic, not through the mask: real masks clear bits
    the magic holds (qemu's i386 and Rosetta's put fe over EI_DATA, qemu's ppc64le
    leaves e_machine's high byte unmatched). A mask that clears e_machine entirely
    matches every machine, so it names none.
    """
    if offset != 0 or not magic.startswith(ELF_SIGNATURE):
        return NotElf("its magic is not an ELF header")
    if len(magic) < 20:
        return NotElf("its ELF magic ends before e_machine, so it matches any machine")
    if mask is not None and not any(mask[18:20]):
        return NotElf("its mask ignores e_machine, so it matches any machine")
    elf_class, data = magic[4], magic[5]
    machine = int.from_bytes(magic[18:20], "little" if data == LSB else "big")
    return ElfIdentity(elf_class, data, machine, mips_n32=_is_mips_n32(magic, mask, machine))


def _is_mips_n32(magic: bytes, mask: Optional[bytes], machine: int) -> bool:
    """qemu tells o32 from n32 by the EF_MIPS_ABI2 bit of e_flags (byte 39 or 36)."""
    flags_byte = 39 if magic[5] == MSB else 36
    if machine != EM_MIPS or magic[4] != C32 or len(magic) <= flags_byte:
        return False
    pinned = mask is None or mask[flags_byte] & EF_MIPS_ABI2
    return bool(pinned and magic[flags_byte] & EF_MIPS_ABI2)


def nix_system(identity: ElfIdentity) -> Optional[str]:
    """The Nix system double for these binaries, or None when Nix has none."""
    if identity.mips_n32:
        return None
    return NIX_SYSTEMS.get((identity.machine, identity.elf_class, identity.data))


# One ELF machine, more than one Nix system: an ARMv7 emulator runs ARMv6 programs too.
ALSO_RUNS: dict[str, tuple[str, ...]] = {"armv7l-linux": ("armv6l-linux",)}


def served_systems(identity: ElfIdentity) -> tuple[str, ...]:
    """Every Nix system whose binaries these are; () when Nix has none."""
    system = nix_system(identity)
    return () if system is None else (system, *ALSO_RUNS.get(system, ()))


def with_also_runs(table: dict[str, T]) -> dict[str, T]:
    """A table by Nix system, with ALSO_RUNS's systems sharing their machine's entry."""
    extra = {other: table[system] for system, others in ALSO_RUNS.items() if system in table
             for other in others}
    return {**table, **extra}


def host_system(machine: str) -> str:
    """The Nix system of a host whose `uname -m` prints `machine`."""
    return HOST_SYSTEMS.get(machine, f"{machine}-linux")


# What Nix lists in extra-platforms by itself, on a host of this system.
NIX_DEFAULT_EXTRA: dict[str, tuple[str, ...]] = {"x86_64-linux": ("i686-linux",)}


def also_native(host_system: str, runs_32bit: Optional[bool] = None) -> tuple[str, ...]:
    """The systems a host runs with no emulator besides its own: the 32-bit ones of its
    family, where its CPU and kernel run 32-bit programs (host.py asks the kernel). Not
    asked (None): x86_64 runs i686, as Nix takes it; an aarch64 CPU may have no AArch32
    at all, so it is not taken to."""
    if runs_32bit is None:
        runs_32bit = host_system == "x86_64-linux"
    if not runs_32bit:
        return ()
    return {"x86_64-linux": ("i686-linux",),
            "aarch64-linux": ("armv7l-linux", "armv6l-linux")}.get(host_system, ())


def native_reason(system: str, host_system: str,
                  also: Optional[Sequence[str]] = None) -> Optional[str]:
    """Why `system` needs no emulator on this host, else None (`also`: what else the host
    runs natively, also_native's answer by default).

    binfmt_misc is tried before the kernel's own loader: a handler for the host's own
    programs captures every program on the machine (qemu-x86_64 for x86_64 recurses into
    itself: even `ls` fails with "Too many levels of symbolic links"), and a binfmt.d line
    brings it back at every boot. So binfmtd never registers one.
    """
    if system == host_system:
        return (f"{system} is this host's own system: it runs natively, and a handler for it "
                "would capture every program on the machine")
    if system in (also_native(host_system) if also is None else also):
        return f"this {host_system} host runs {system} programs natively"
    return None


def known_systems() -> frozenset[str]:
    """Every Nix system binfmtd can name: what its magics decode to, and host systems."""
    return frozenset({*NIX_SYSTEMS.values(), *HOST_SYSTEMS.values(),
                      *(s for others in ALSO_RUNS.values() for s in others)})


def unknown_system(word: str, known: frozenset[str]) -> Optional[str]:
    """Why `word` is not among `known` systems, naming the closest; None when it is."""
    if word in known:
        return None
    import difflib  # only a mistake pays for it

    machine = word.split("-", 1)[0]  # the part before -linux is where typos are
    alias = HOST_SYSTEMS.get(machine)  # arm64, amd64: uname's names
    by_machine = {system.split("-", 1)[0]: system for system in known}
    close = ([alias] if alias else
             [by_machine[m] for m in difflib.get_close_matches(machine, sorted(by_machine),
                                                               n=1, cutoff=0.6)])
    hint = f"did you mean {close[0]}?" if close else f"known: {' '.join(sorted(known))}"
    return f"{word!r} is not a system binfmtd knows ({hint})"
