"""Real registrations, as the kernel printed them for each registrar (tests/data/binfmt_misc)."""

from __future__ import annotations

import pytest

from binfmtd.binfmt import Handler, Interpreter, MalformedEntry, parse_entry, read_binfmt_state
from binfmtd.config import Config
from binfmtd.reconcile import Plan, plan
from tests.support.parts import DATA

FIXTURES = DATA / "binfmt_misc"


def plan_for_registrar(registrar: str, host: str = "x86_64-linux",
                       missing: frozenset[str] = frozenset()) -> Plan:
    """Plan as if every interpreter were a static file on this host, unless named missing."""
    state = read_binfmt_state(FIXTURES / registrar)
    interpreters = {
        e.interpreter: Interpreter(e.interpreter, e.interpreter not in missing)
        for e in state.entries if isinstance(e, Handler)
    }
    return plan(state, interpreters, "", Config(), host)


def declared(result: Plan) -> dict[str, tuple[str, ...]]:
    return {v.name: v.platforms for v in result.verdicts}


def test_debian_qemu_user_static() -> None:
    result = plan_for_registrar("debian")
    assert declared(result) == {
        "llvm-14-runtime.binfmt": (), "python3.11": (),
        "qemu-aarch64": ("aarch64-linux",), "qemu-alpha": (),
        "qemu-arm": ("armv7l-linux", "armv6l-linux"), "qemu-armeb": (),
        "qemu-cris": (), "qemu-hexagon": (), "qemu-hppa": (),
        "qemu-loongarch64": ("loongarch64-linux",), "qemu-m68k": ("m68k-linux",),
        "qemu-microblaze": ("microblaze-linux",), "qemu-mips": ("mips-linux",),
        "qemu-mips64": ("mips64-linux",), "qemu-mips64el": ("mips64el-linux",),
        "qemu-mipsel": ("mipsel-linux",), "qemu-mipsn32": (), "qemu-mipsn32el": (),
        "qemu-ppc": ("powerpc-linux",), "qemu-ppc64": ("powerpc64-linux",),
        "qemu-ppc64le": ("powerpc64le-linux",), "qemu-riscv32": ("riscv32-linux",),
        "qemu-riscv64": ("riscv64-linux",), "qemu-s390x": ("s390x-linux",),
        "qemu-sh4": (), "qemu-sh4eb": (), "qemu-sparc": ("sparc-linux",),
        "qemu-sparc32plus": (), "qemu-sparc64": ("sparc64-linux",),
        "qemu-xtensa": (), "qemu-xtensaeb": (),
    }
    assert result.problems == ()
    assert result.sandbox_paths == ()  # every Debian handler has F


def test_debian_entry_is_parsed_exactly() -> None:
    entry = parse_entry("qemu-aarch64", (FIXTURES / "debian" / "qemu-aarch64").read_text())
    assert entry == Handler(
        name="qemu-aarch64", enabled=True,
        interpreter="/usr/libexec/qemu-binfmt/aarch64-binfmt-P",
        flags=frozenset("POF"),
        magic=bytes.fromhex("7f454c460201010000000000000000000200b700"),
        mask=bytes.fromhex("ffffffffffffff00fffffffffffffffffeffffff"),
    )


def test_fedora_qemu_user_static() -> None:
    result = declared(plan_for_registrar("fedora"))
    assert result["qemu-aarch64"] == ("aarch64-linux",)
    assert result["qemu-aarch64_be"] == ()  # Nix has no aarch64_be-linux
    assert result["qemu-ppc64le"] == ("powerpc64le-linux",)
    assert result["qemu-riscv64"] == ("riscv64-linux",)
    assert result["qemu-s390x"] == ("s390x-linux",)
    assert result["qemu-loongarch64"] == ("loongarch64-linux",)


def test_ubuntu_binfmt_support() -> None:
    result = plan_for_registrar("ubuntu")
    assert declared(result) == {"qemu-aarch64": ("aarch64-linux",),
                                "qemu-arm": ("armv7l-linux", "armv6l-linux"),
                                "qemu-riscv64": ("riscv64-linux",)}


def test_docker_installer_paths_live_in_a_container_and_f_keeps_them_working() -> None:
    state = read_binfmt_state(FIXTURES / "docker")
    missing = frozenset(e.interpreter for e in state.entries if isinstance(e, Handler))
    result = plan_for_registrar("docker", missing=missing)
    assert result.platforms == ("aarch64-linux", "armv6l-linux", "armv7l-linux",
                                "powerpc64le-linux", "riscv64-linux", "s390x-linux")
    assert result.sandbox_paths == () and result.problems == ()


@pytest.mark.parametrize(
    ("registrar", "host", "expected"),
    [
        ("rosetta", "aarch64-linux", ("x86_64-linux",)),
        ("rosetta", "x86_64-linux", ()),
        ("rosetta-lima", "aarch64-linux", ("x86_64-linux",)),
        ("rosetta-nixos", "aarch64-linux", ("x86_64-linux",)),
        ("fex", "aarch64-linux", ("i686-linux", "x86_64-linux")),
        ("fex-current", "aarch64-linux", ("i686-linux", "x86_64-linux")),
        ("box64", "aarch64-linux", ("x86_64-linux",)),
        ("box32", "aarch64-linux", ("i686-linux", "x86_64-linux")),
        ("binfmt-dispatcher", "aarch64-linux", ("i686-linux", "x86_64-linux")),
    ],
)
def test_x86_emulators_on_arm_hosts(registrar: str, host: str, expected: tuple[str, ...]) -> None:
    assert plan_for_registrar(registrar, host=host).platforms == expected


# What each aarch64 registrar's entries are, as the kernel printed them: (entry, interpreter,
# flags, system). The sandbox needs the interpreter only where the kernel did not open it (F).
ARM_HOST_ENTRIES = {
    "rosetta": [("rosetta", "/media/rosetta/rosetta", "OCF", "x86_64-linux")],
    "rosetta-lima": [("rosetta", "/mnt/lima-rosetta/rosetta", "OCF", "x86_64-linux")],
    "rosetta-nixos": [("rosetta", "/run/binfmt/rosetta", "OCF", "x86_64-linux")],
    "fex": [("FEX-x86", "/usr/bin/FEXInterpreter", "POCF", "i686-linux"),
            ("FEX-x86_64", "/usr/bin/FEXInterpreter", "POCF", "x86_64-linux")],
    "fex-current": [("FEX-x86", "/usr/bin/FEX", "POCF", "i686-linux"),
                    ("FEX-x86_64", "/usr/bin/FEX", "POCF", "x86_64-linux")],
    "box64": [("x86_64", "/usr/bin/box64", "", "x86_64-linux")],
    "box32": [("box32", "/usr/bin/box64", "", "i686-linux"),
              ("x86_64", "/usr/bin/box64", "", "x86_64-linux")],
    "binfmt-dispatcher": [
        ("binfmt-dispatcher-x86", "/usr/bin/binfmt-dispatcher", "POCF", "i686-linux"),
        ("binfmt-dispatcher-x86_64", "/usr/bin/binfmt-dispatcher", "POCF", "x86_64-linux")],
}


@pytest.mark.parametrize("registrar", ARM_HOST_ENTRIES)
def test_aarch64_registrars_decode_to_their_systems(registrar: str) -> None:
    result = plan_for_registrar(registrar, host="aarch64-linux")
    verdicts = {v.name: v for v in result.verdicts}
    seen = []
    for name, interpreter, flags, system in ARM_HOST_ENTRIES[registrar]:
        handler = verdicts[name].handler
        assert isinstance(handler, Handler)
        assert (handler.interpreter, handler.flags) == (interpreter, frozenset(flags))
        assert verdicts[name].platforms == (system,) and verdicts[name].problems == ()
        assert verdicts[name].sandbox_paths == (() if "F" in flags else (interpreter,))
        seen.append(name)
    assert sorted(verdicts) == sorted(seen)  # no entry of the folder left unchecked
    assert result.problems == ()


def test_a_dispatchers_entry_says_what_else_the_sandbox_needs() -> None:
    verdicts = plan_for_registrar("binfmt-dispatcher", host="aarch64-linux").verdicts
    assert all("sandbox-paths" in (v.note or "") and "doctor" in (v.note or "")
               for v in verdicts), verdicts
    fex = plan_for_registrar("fex-current", host="aarch64-linux").verdicts
    assert [v.note for v in fex] == [None, None]  # the control: an emulator is no dispatcher


def test_hostile_entries_declare_nothing_and_say_why() -> None:
    result = plan_for_registrar("hostile")
    by_name = {v.name: v for v in result.verdicts}
    assert result.platforms == ()
    assert by_name["qemu-aarch64"].problems[0].startswith("malformed entry")
    assert "' '" in by_name["qemu-riscv64"].problems[0]
    assert "'='" in by_name["qemu-ppc64le"].problems[0]
    assert "absolute" in by_name["qemu-arm"].problems[0]
    assert "extension .exe" in (by_name["wine"].note or "")
    assert by_name["qemu-s390x"].note == "disabled"


def test_disabled_binfmt_misc_declares_nothing() -> None:
    result = plan_for_registrar("disabled")
    assert result.platforms == ()
    assert "disabled" in (result.verdicts[0].note or "")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "has 0 lines"),
        ("enabled\ninterpreter /x\n", "has 2 lines"),
        ("maybe\ninterpreter /x\nflags: F\noffset 0\nmagic 7f\n", "not enabled/disabled"),
        ("enabled\ninterpreter /x\nflags: Z\noffset 0\nmagic 7f\n", "unknown flags"),
        ("enabled\ninterpreter /x\nflags: F\noffset 0\nmagic zz\n", "not hexadecimal"),
        ("enabled\ninterpreter /x\nflags: F\noffset 0\nmagic 7f45\nmask ff\n", "length differs"),
        ("enabled\ninterpreter /x\nflags: F\noffset x\nmagic 7f45\n", "bad offset"),
        # found by hypothesis: '¹'.isdigit() is True, int('¹0') raises
        ("enabled\ninterpreter /x\nflags: F\noffset \u00b90\nmagic 7f45\n", "bad offset"),
        ("enabled\ninterpreter /x\nflags: F\noffset 0\nmagic 7f\nmask ff\nextra\n",
         "unexpected lines"),
        ("enabled\ninterpreter /x\nflags: F\nextension .exe\nmore\n", "after its extension"),
    ],
)
def test_malformed_entries_are_named(text: str, reason: str) -> None:
    entry = parse_entry("bad", text)
    assert isinstance(entry, MalformedEntry)
    assert reason in entry.reason
