"""plan(): which handler declares what, and when nix.conf must change."""

from __future__ import annotations

import pytest

from binfmtd.binfmt import BinfmtState, Handler, Interpreter, MalformedEntry
from binfmtd.config import Config
from binfmtd.nixconf import BEGIN_MARKER, render_block, with_block
from binfmtd.reconcile import plan

AARCH64 = bytes.fromhex("7f454c460201010000000000000000000200b700")
ARM = bytes.fromhex("7f454c460101010000000000000000000200" + "2800")
I386 = bytes.fromhex("7f454c460101010000000000000000000200" + "0300")
X86_64 = bytes.fromhex("7f454c4602010100000000000000000002003e00")
MASK = bytes.fromhex("ffffffffffffff00fffffffffffffffffeffffff")
QEMU = "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
DEFAULTS = Config()
STATIC = Interpreter(QEMU, True, ("/usr/bin/qemu-aarch64-static",))


def handler(name: str = "qemu-aarch64", magic: bytes = AARCH64, flags: str = "POF",
            interpreter: str = QEMU, enabled: bool = True) -> Handler:
    return Handler(name, enabled, interpreter, frozenset(flags), magic, MASK)


def make_plan(*entries: Handler | MalformedEntry, conf: str = "", config: Config = DEFAULTS,
              interpreters: dict[str, Interpreter] | None = None, enabled: bool = True,
              mounted: bool = True, host: str = "x86_64-linux"):  # type: ignore[no-untyped-def]
    found = {QEMU: STATIC} if interpreters is None else interpreters
    return plan(BinfmtState(mounted, enabled, entries), found, conf, config, host)


def test_debian_static_handler_with_f_declares_its_platform_and_no_path() -> None:
    result = make_plan(handler())
    assert result.platforms == ("aarch64-linux",)
    assert result.sandbox_paths == ()
    assert result.text == with_block("", render_block(["aarch64-linux"], []))
    assert result.text is not None  # a change: nix-daemon is restarted after its write


def test_the_name_says_nothing_the_magic_decides() -> None:
    result = make_plan(handler(name="emu-7"), handler(name="qemu-aarch64-but-really-arm",
                                                      magic=ARM))
    assert result.platforms == ("aarch64-linux", "armv6l-linux", "armv7l-linux")


def test_without_f_the_interpreter_and_its_link_target_go_into_the_sandbox() -> None:
    result = make_plan(handler(flags="PO"))
    assert result.sandbox_paths == ("/usr/bin/qemu-aarch64-static", QEMU)


def test_a_dynamic_interpreter_brings_its_loader_and_libraries_even_with_f() -> None:
    libs = ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libglib-2.0.so.0")
    dynamic = Interpreter("/usr/bin/qemu-aarch64", True, (), libs[0], libs)
    result = make_plan(handler(interpreter="/usr/bin/qemu-aarch64", flags="F"),
                       interpreters={"/usr/bin/qemu-aarch64": dynamic})
    assert result.sandbox_paths == tuple(sorted(libs))
    assert result.verdicts[0].platforms == ("aarch64-linux",)


def test_missing_interpreter_with_f_still_works_as_docker_registers_it() -> None:
    result = make_plan(handler(interpreter="/usr/bin/qemu-aarch64", flags="POCF"),
                       interpreters={})
    assert result.platforms == ("aarch64-linux",)
    assert "holds it open" in (result.verdicts[0].note or "")
    assert result.problems == ()


def test_missing_interpreter_without_f_is_a_problem_and_declares_nothing() -> None:
    result = make_plan(handler(flags="P"), interpreters={})
    assert result.platforms == ()
    assert "missing" in result.problems[0].message
    assert result.problems[0].subject == "qemu-aarch64"


@pytest.mark.parametrize(
    "bad_path", ["/opt/my emu/qemu", "/opt/emu=x", "relative/qemu", "/opt/a#b"]
)
def test_a_path_nix_cannot_take_is_never_written(bad_path: str) -> None:
    result = make_plan(handler(interpreter=bad_path, flags="PO"),
                       interpreters={bad_path: Interpreter(bad_path, True)})
    assert result.platforms == () and result.text is None
    assert "not declared" in result.problems[0].message


def test_a_malformed_entry_is_a_problem_and_the_others_still_count() -> None:
    result = make_plan(MalformedEntry("evil", "has unexpected lines"), handler())
    assert result.platforms == ("aarch64-linux",)
    assert [p.subject for p in result.problems] == ["evil"]


@pytest.mark.parametrize(
    ("entry", "enabled", "note"),
    [
        (handler(enabled=False), True, "disabled"),
        (handler(), False, "binfmt_misc as a whole is disabled"),
        (Handler("wine", True, "/usr/bin/wine", frozenset(), None, None, extension="exe"),
         True, "extension .exe"),
        (handler(magic=I386), True, "natively"),
        (handler(magic=bytes.fromhex("a70d0d0a"), ), True, "not an ELF header"),
    ],
)
def test_handlers_that_declare_nothing_say_why(entry: Handler, enabled: bool, note: str) -> None:
    result = make_plan(entry, enabled=enabled)
    assert result.platforms == ()
    assert note in (result.verdicts[0].note or "")
    assert result.problems == ()


def test_config_adds_i686_drops_armv6l_and_ignores_platforms() -> None:
    config = Config(declare_i686=True, declare_armv6l=False,
                    ignore_platforms=frozenset({"aarch64-linux"}))
    result = make_plan(handler(), handler("arm", ARM), handler("i386", I386), config=config)
    assert result.platforms == ("armv7l-linux", "i686-linux")
    assert "ignore-platforms" in (result.verdicts[0].note or "")


def test_the_host_system_is_never_declared() -> None:
    result = make_plan(handler(), handler("x86", X86_64), host="aarch64-linux")
    assert result.platforms == ("x86_64-linux",)


@pytest.mark.parametrize(("magic", "host"), [(X86_64, "x86_64-linux"),
                                             (AARCH64, "aarch64-linux")])
def test_a_handler_for_the_hosts_own_programs_is_a_problem(magic: bytes, host: str) -> None:
    """binfmt_misc runs before the native loader: such a handler takes every program."""
    result = make_plan(handler("qemu-own", magic, interpreter="/usr/bin/qemu-own"),
                       handler("arm", ARM), host=host)
    assert result.platforms == ("armv6l-linux", "armv7l-linux")
    own = result.verdicts[0]
    assert own.captures_host and own.platforms == ()
    assert [str(p) for p in result.problems] == [
        "qemu-own: matches this host's own programs: binfmt_misc is tried before the kernel's "
        "own loader, so every program on the machine goes through /usr/bin/qemu-own (or fails "
        "with 'Too many levels of symbolic links'); remove it with "
        "`echo -1 > /proc/sys/fs/binfmt_misc/qemu-own` and the binfmt.d line that registers "
        "it at boot"]
    disabled = make_plan(handler("qemu-own", magic, enabled=False), host=host)
    assert disabled.problems == ()  # a disabled one takes nothing


def test_emulated_systems_the_host_runs_natively_are_no_problem() -> None:
    """One list for a fleet of x86_64 and aarch64 builders names each one's own system."""
    fleet = Config(emulated_systems=("aarch64-linux", "i686-linux", "x86_64-linux"))
    assert make_plan(handler(), config=fleet).problems == ()
    missing = make_plan(handler("arm", ARM), config=fleet, host="aarch64-linux").problems
    assert [p.subject for p in missing] == ["i686-linux", "x86_64-linux"]


def test_in_sync_means_no_write_and_no_restart() -> None:
    synced = make_plan(handler()).text
    assert synced is not None
    again = make_plan(handler(), conf=synced)
    assert again.in_sync and again.text is None
    assert again.declared_platforms == ("aarch64-linux",)


def test_losing_every_emulator_takes_the_block_out_again() -> None:
    synced = make_plan(handler(), conf="sandbox = true\n").text
    assert synced is not None
    assert make_plan(conf=synced).text == "sandbox = true\n"


def test_unmounted_binfmt_misc_leaves_nix_conf_alone_and_says_so() -> None:
    synced = make_plan(handler()).text or ""
    result = make_plan(conf=synced, mounted=False)
    assert result.text is None
    assert "not mounted" in result.problems[0].message


def test_a_broken_block_blocks_editing() -> None:
    result = make_plan(handler(), conf=f"a = 1\n{BEGIN_MARKER}\n")
    assert result.text is None and result.blocked is not None and not result.in_sync
    assert "by hand" in result.blocked.message


def test_a_later_override_is_reported_and_the_block_moved_last() -> None:
    synced = make_plan(handler()).text or ""
    result = make_plan(handler(), conf=synced + "extra-platforms = mips-linux\n")
    assert any("overrides it" in p.message for p in result.problems)
    assert result.text is not None and result.text.startswith("extra-platforms = mips-linux\n")


def test_a_users_own_extra_platforms_line_is_pointed_out() -> None:
    result = make_plan(handler(), conf="extra-platforms = riscv64-linux\n")
    assert "replaces Nix's default" in result.notes[0]
    assert result.text is not None and result.text.startswith("extra-platforms = riscv64-linux\n")


def test_two_handlers_for_one_system_declare_it_once() -> None:
    result = make_plan(handler(), handler()._replace(name="qemu-aarch64-2"))
    assert result.platforms == ("aarch64-linux",)


def test_a_sandbox_path_others_may_change_is_never_declared() -> None:
    """Whoever can replace the interpreter of a handler without F controls every build
    for its system: binfmtd names the path and declares nothing for it."""
    why = "/opt/emu is writable by every user (mode 0777)"
    risky = Interpreter("/opt/emu/qemu-aarch64", True, untrusted=(("/opt/emu/qemu-aarch64", why),))
    without_f = make_plan(handler(flags="P", interpreter="/opt/emu/qemu-aarch64"),
                          interpreters={"/opt/emu/qemu-aarch64": risky})
    assert without_f.platforms == () and without_f.sandbox_paths == ()
    assert [str(p) for p in without_f.problems] == [
        "qemu-aarch64: sandbox path /opt/emu/qemu-aarch64 is not root's alone: /opt/emu is "
        "writable by every user (mode 0777), and whoever can change it controls every "
        "aarch64-linux build; not declared (make it root's: chown root, chmod go-w)"]
    with_f = make_plan(handler(flags="PF", interpreter="/opt/emu/qemu-aarch64"),
                       interpreters={"/opt/emu/qemu-aarch64": risky})
    assert with_f.platforms == ("aarch64-linux",)  # the kernel holds it: nothing declared
    assert with_f.sandbox_paths == () and with_f.problems == ()
