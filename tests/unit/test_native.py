"""What a host runs with no emulator, and the sandbox paths config.toml adds: the pure
core's half of aarch64 hosts (tests/aarch64 boots one for the kernel's half)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from binfmtd.binfmt import BinfmtState, Handler, Interpreter, read_binfmt_state
from binfmtd.config import Config, parse_config
from binfmtd.errors import BinfmtdError
from binfmtd.host import runs_32bit
from binfmtd.interpreters import read_sandbox_path
from binfmtd.platforms import also_native, host_system, native_reason
from binfmtd.reconcile import Plan, plan
from tests.support.parts import DATA

ARM32 = ("armv7l-linux", "armv6l-linux")


@pytest.mark.parametrize("system,answer,expected", [
    ("aarch64-linux", True, ARM32),  # Cortex-A57, A72 (Raspberry Pi 4)
    ("aarch64-linux", False, ()),  # Apple M1/M2, AmpereOne: no AArch32
    ("aarch64-linux", None, ()),  # not asked: not taken to
    ("x86_64-linux", None, ("i686-linux",)),  # as Nix itself takes it
    ("x86_64-linux", True, ("i686-linux",)),
    ("riscv64-linux", True, ()),
])
def test_what_a_host_runs_natively_follows_the_kernels_answer(
        system: str, answer: bool | None, expected: tuple[str, ...]) -> None:
    assert also_native(system, answer) == expected


def test_uname_says_aarch64_either_way() -> None:
    """Why the kernel is asked: the machine name does not tell a CPU without AArch32."""
    assert host_system("aarch64") == host_system("arm64") == "aarch64-linux"


def test_this_x86_64_host_is_not_probed() -> None:
    assert os.uname().machine != "x86_64" or runs_32bit("x86_64-linux") is True


def arm_plan(also: tuple[str, ...], registrar: str = "debian") -> Plan:
    state = read_binfmt_state(DATA / "binfmt_misc" / registrar)
    interpreters = {e.interpreter: Interpreter(e.interpreter, True)
                    for e in state.entries if isinstance(e, Handler)}
    return plan(state, interpreters, "", Config(), "aarch64-linux", also=also)


def test_an_aarch64_host_with_aarch32_declares_arm32_with_no_emulator() -> None:
    with_32 = arm_plan(ARM32, registrar="disabled")  # no working handler at all
    assert set(ARM32) <= set(with_32.platforms)
    assert arm_plan((), registrar="disabled").platforms == ()  # the control: no AArch32


def test_an_arm_handler_on_such_a_host_is_a_note_and_the_host_its_own_system() -> None:
    verdicts = {v.name: v for v in arm_plan(ARM32).verdicts}
    assert verdicts["qemu-arm"].platforms == () and "natively" in (verdicts["qemu-arm"].note or "")
    assert verdicts["qemu-aarch64"].platforms == ()  # the host's own
    assert verdicts["qemu-aarch64"].problems, verdicts["qemu-aarch64"]
    # Without AArch32 the same handler is what runs 32-bit ARM programs.
    without = {v.name: v for v in arm_plan(()).verdicts}
    assert without["qemu-arm"].platforms == ARM32


def test_register_refuses_what_the_host_runs_itself() -> None:
    assert native_reason("armv7l-linux", "aarch64-linux", ARM32) is not None
    assert native_reason("armv7l-linux", "aarch64-linux", ()) is None
    assert native_reason("aarch64-linux", "aarch64-linux", ()) is not None


# --- sandbox-paths in config.toml -----------------------------------------------------------

def test_sandbox_paths_is_a_table_of_systems_and_absolute_paths() -> None:
    config = parse_config({"sandbox-paths": {"x86_64-linux": ["/usr/lib/box64-x86_64"]}}, "c")
    assert config.sandbox_paths == (("x86_64-linux", ("/usr/lib/box64-x86_64",)),)


@pytest.mark.parametrize("value,says", [
    (["/usr/lib/box64"], "must be a table of systems"),
    ({"x86_64": ["/usr/lib/box64"]}, "x86_64-linux"),  # a typo names the closest
    ({"x86_64-linux": "/usr/lib/box64"}, "must be a list of paths"),
    ({"x86_64-linux": ["usr/lib/box64"]}, "usr/lib/box64"),  # relative
])
def test_a_mistake_in_sandbox_paths_is_one_line_naming_it(value: object, says: str) -> None:
    with pytest.raises(BinfmtdError) as raised:
        parse_config({"sandbox-paths": value}, "config.toml")
    assert says in str(raised.value) and "\n" not in str(raised.value)


def x86_on_arm(config: Config, looked: dict[str, Interpreter]) -> Plan:
    """Fedora Asahi's dispatcher entries on an aarch64 host, with config's sandbox-paths."""
    state: BinfmtState = read_binfmt_state(DATA / "binfmt_misc" / "binfmt-dispatcher")
    interpreters = {e.interpreter: Interpreter(e.interpreter, True)
                    for e in state.entries if isinstance(e, Handler)}
    return plan(state, interpreters, "", config, "aarch64-linux", also=(),
                configured=looked)


def test_sandbox_paths_are_declared_for_an_emulated_system_when_root_owns_them(
        tmp_path: Path) -> None:
    fex = Path("/usr/bin")  # exists and is root's on any host that runs the tests
    config = parse_config({"sandbox-paths": {"x86_64-linux": [str(fex)],
                                             "riscv64-linux": ["/usr/sbin"]}}, "c")
    result = x86_on_arm(config, {str(fex): read_sandbox_path(str(fex)),
                                 "/usr/sbin": read_sandbox_path("/usr/sbin")})
    assert str(fex) in result.sandbox_paths and result.problems == ()
    assert "/usr/sbin" not in result.sandbox_paths  # riscv64-linux is not emulated here


def test_a_missing_or_others_sandbox_path_is_a_problem_never_declared(tmp_path: Path) -> None:
    open_folder = tmp_path / "shared"
    open_folder.mkdir()
    open_folder.chmod(0o777)  # anyone may replace what is in it
    missing = str(tmp_path / "gone")
    config = parse_config({"sandbox-paths": {"x86_64-linux": [str(open_folder), missing]}}, "c")
    result = x86_on_arm(config, {str(open_folder): read_sandbox_path(str(open_folder)),
                                 missing: read_sandbox_path(missing)})
    assert str(open_folder) not in result.sandbox_paths and missing not in result.sandbox_paths
    said = [p.message for p in result.problems if p.subject == "sandbox-paths"]
    assert len(said) == 2 and "does not exist" in said[1] and "root's" in said[0], said
