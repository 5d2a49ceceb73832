"""The command-line contract, as a script or an administrator meets it."""

from __future__ import annotations

import json
import os

import pytest

from tests.cli.conftest import Sandbox

ORIGINAL = "# the user's own file\nsandbox = true\ntrusted-users = root\n"


def status_json(sandbox: Sandbox) -> dict:  # type: ignore[type-arg]
    result = sandbox.run("status", "--json")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_status_on_debian_qemu_names_every_handler_and_says_out_of_sync(
    sandbox: Sandbox,
) -> None:
    result = sandbox.run("status", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    handlers = {h["name"]: h for h in report["handlers"]}
    assert handlers["qemu-aarch64"]["platform"] == "aarch64-linux"
    assert handlers["qemu-aarch64"]["flags"] == "POF"
    assert handlers["qemu-aarch64"]["interpreter_kind"] == "static"
    assert handlers["qemu-alpha"]["platform"] is None
    assert "Nix has no system" in handlers["qemu-alpha"]["note"]
    assert handlers["python3.11"]["platform"] is None
    assert report["platforms"] == [] and not report["in_sync"]
    assert "aarch64-linux" in report["wanted_platforms"]
    assert report["nix_conf"] == str(sandbox.nix_conf)


def test_status_page_is_readable(sandbox: Sandbox) -> None:
    result = sandbox.run("status")
    assert result.returncode == 1
    assert "qemu-aarch64" in result.stdout and "aarch64-linux" in result.stdout
    assert "OUT OF SYNC: run `binfmtd sync`" in result.stdout


def test_sync_writes_the_block_restarts_once_and_then_is_in_sync(sandbox: Sandbox) -> None:
    result = sandbox.run("sync")
    assert result.returncode == 0, result.stderr
    text = sandbox.nix_conf.read_text()
    assert text.startswith(ORIGINAL)
    platforms_line = next(ln for ln in text.splitlines() if ln.startswith("extra-extra-platforms"))
    declared = platforms_line.split("=", 1)[1].split()
    for system in ("aarch64-linux", "armv7l-linux", "armv6l-linux", "riscv64-linux",
                   "powerpc64le-linux", "s390x-linux", "mips64el-linux", "loongarch64-linux"):
        assert system in declared
    assert "x86_64-linux" not in declared and "i686-linux" not in declared
    assert "extra-sandbox-paths" not in text  # Debian's handlers are static with F
    assert sandbox.restarts == ["restart --now"]

    mtime = sandbox.nix_conf.stat().st_mtime_ns
    again = sandbox.run("sync")
    assert again.returncode == 0 and "already in sync" in again.stdout
    assert sandbox.nix_conf.stat().st_mtime_ns == mtime
    assert sandbox.restarts == ["restart --now"]
    assert sandbox.run("status").returncode == 0


def test_check_changes_nothing_and_exits_1_when_a_change_is_due(sandbox: Sandbox) -> None:
    result = sandbox.run("sync", "--check", "--diff")
    assert result.returncode == 1
    assert "+extra-extra-platforms = " in result.stdout
    assert sandbox.nix_conf.read_text() == ORIGINAL
    assert sandbox.restarts == []
    assert sandbox.run("sync").returncode == 0
    assert sandbox.run("sync", "--check").returncode == 0


def test_sync_json_says_changed(sandbox: Sandbox) -> None:
    first = json.loads(sandbox.run("sync", "--json").stdout)
    second = json.loads(sandbox.run("sync", "--json").stdout)
    assert first["changed"] is True and second["changed"] is False
    assert first["in_sync"] and "aarch64-linux" in first["platforms"]


def test_no_restart(sandbox: Sandbox) -> None:
    assert sandbox.run("sync", "--no-restart").returncode == 0
    assert sandbox.restarts == []


def test_remove_gives_back_the_file_byte_for_byte(sandbox: Sandbox) -> None:
    sandbox.nix_conf.write_bytes(b"sandbox = true\r\n# no final newline")
    assert sandbox.run("sync").returncode == 0
    result = sandbox.run("remove")
    assert result.returncode == 0 and "removed" in result.stdout
    assert sandbox.nix_conf.read_bytes() == b"sandbox = true\r\n# no final newline"
    assert sandbox.restarts == ["restart --now", "restart --now"]
    assert "nothing to remove" in sandbox.run("remove").stdout


def test_emulators_going_away_take_the_block_out(sandbox: Sandbox) -> None:
    sandbox.run("sync")
    for entry in sandbox.binfmt_misc.iterdir():
        if entry.name.startswith("qemu-"):
            entry.unlink()
    assert sandbox.run("sync").returncode == 0
    assert sandbox.nix_conf.read_text() == ORIGINAL


def test_disabled_binfmt_misc_emulates_nothing(sandbox: Sandbox) -> None:
    (sandbox.binfmt_misc / "status").write_text("disabled\n")
    report = status_json(sandbox)
    assert report["wanted_platforms"] == []
    assert report["binfmt_misc"]["enabled"] is False


def test_determinate_layout_puts_the_block_in_nix_custom_conf(sandbox: Sandbox) -> None:
    sandbox.nix_conf.write_text("sandbox = true\n!include nix.custom.conf\n")
    custom = sandbox.nix_conf.parent / "nix.custom.conf"
    custom.write_text("# custom\n")
    assert sandbox.run("sync").returncode == 0
    assert sandbox.nix_conf.read_text() == "sandbox = true\n!include nix.custom.conf\n"
    assert "extra-extra-platforms = " in custom.read_text()


def test_a_broken_block_is_an_error_and_the_file_is_untouched(sandbox: Sandbox) -> None:
    damaged = ORIGINAL + "# BEGIN binfmtd managed block: edits inside are overwritten\n"
    sandbox.nix_conf.write_text(damaged)
    result = sandbox.run("sync")
    assert result.returncode == 2
    assert "by hand" in result.stderr and "Traceback" not in result.stderr
    assert sandbox.nix_conf.read_text() == damaged
    assert sandbox.run("status").returncode == 1
    assert sandbox.run("remove").returncode == 2


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("restrat = false\n", "unknown key 'restrat'"),
        ("declare-i686 = 1\n", "declare-i686 must be true or false"),
        ("[broken\n", "not valid TOML"),
    ],
)
def test_config_mistakes_exit_2_with_one_line(sandbox: Sandbox, config: str, message: str) -> None:
    sandbox.config.write_text(config)
    for command in ("status", "sync"):
        result = sandbox.run(command)
        assert result.returncode == 2
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_options_win_over_environment(sandbox: Sandbox, tmp_path: os.PathLike[str]) -> None:
    other = sandbox.root / "other.conf"
    other.write_text("")
    result = sandbox.run("--nix-conf", str(other), "sync", "--no-restart")
    assert result.returncode == 0
    assert "extra-extra-platforms" in other.read_text()
    assert sandbox.nix_conf.read_text() == ORIGINAL


def test_a_missing_nix_folder_is_a_clear_error(sandbox: Sandbox) -> None:
    result = sandbox.run("--nix-conf", str(sandbox.root / "no-such" / "nix.conf"), "sync")
    assert result.returncode == 2
    assert "is Nix installed?" in result.stderr


def test_a_failing_restart_is_reported_after_the_write(sandbox: Sandbox) -> None:
    sandbox.config.write_text('restart = ["/bin/false"]\n')
    result = sandbox.run("sync")
    assert result.returncode == 2
    assert "/bin/false failed" in result.stderr
    assert "extra-extra-platforms" in sandbox.nix_conf.read_text()


def test_without_nix_status_says_so_and_how_to_install_it(sandbox: Sandbox) -> None:
    missing = sandbox.root / "no-nix" / "nix.conf"
    env = {"PATH": "/usr/local/sbin:/usr/sbin:/sbin"}  # no nix here
    result = sandbox.run("--nix-conf", str(missing), "status", env=env)
    assert result.returncode == 1
    assert "Nix is not installed: apt-get install nix-bin" in result.stdout
    report = json.loads(sandbox.run("--nix-conf", str(missing), "status", "--json",
                                    env=env).stdout)
    assert report["nix_installed"] is False
