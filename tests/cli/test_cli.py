"""The command-line contract, as a script or an administrator meets it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cli.sandbox import Sandbox
from tests.support.parts import DATA, require

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


def nix_conf_declaring(folder: Path, system: str) -> Path:
    folder.mkdir()
    (folder / "nix.conf").write_text(f"{ORIGINAL}extra-platforms = {system}\n")
    return folder / "nix.conf"


@pytest.mark.parametrize("named", [["--nix-conf", "{}"], ["--nix-conf={}"], ["--nix-c", "{}"]])
@pytest.mark.parametrize("where", ["before", "after"])
def test_status_shows_nix_reading_the_file_the_command_line_names(
        sandbox: Sandbox, named: list[str], where: str) -> None:
    """An option naming another nix.conf than the environment does wins, before the
    command or after it, and Nix reads that very file."""
    require(shutil.which("nix") is not None, "Nix is not installed")
    from_env = nix_conf_declaring(sandbox.root / "env", "mips-linux")
    named_file = nix_conf_declaring(sandbox.root / "named", "riscv64-linux")
    env = {"BINFMTD_NIX_CONF": str(from_env)}
    control = json.loads(sandbox.run("status", "--json", env=env).stdout)
    assert "mips-linux" in control["effective"]["extra-platforms"]
    words = [word.format(named_file) for word in named]
    argv = [*words, "status", "--json"] if where == "before" else ["status", "--json", *words]
    report = json.loads(sandbox.run(*argv, env=env).stdout)
    assert "riscv64-linux" in report["effective"]["extra-platforms"]
    assert "mips-linux" not in report["effective"]["extra-platforms"]


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


# Debian's handlers for machines Nix has no system for, in the order status lists handlers.
NO_NIX_SYSTEM = ["qemu-alpha", "qemu-armeb", "qemu-cris", "qemu-hexagon", "qemu-hppa",
                 "qemu-mipsn32", "qemu-mipsn32el", "qemu-sh4", "qemu-sh4eb",
                 "qemu-sparc32plus", "qemu-xtensa", "qemu-xtensaeb"]


REGISTRARS = sorted(p.name for p in (DATA / "binfmt_misc").iterdir() if p.is_dir())


def _handler_rows(page: str) -> list[str]:
    """The names that start a handler's own row: the binfmt_misc part of the page."""
    lines = page.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("nix.conf "))
    return [line.split()[0] for line in lines[1:end]
            if not line.startswith("   ") and not line.startswith("  no Nix system:")]


def test_status_folds_handlers_nix_has_no_system_for_into_one_line(sandbox: Sandbox) -> None:
    result = sandbox.run("status")
    assert result.returncode == 1, result.stderr
    folds = [ln for ln in result.stdout.splitlines() if ln.strip().startswith("no Nix system:")]
    assert len(folds) == 1, result.stdout
    assert folds[0].split(":", 1)[1].split() == NO_NIX_SYSTEM
    assert "Nix has no system for" not in result.stdout
    rows = _handler_rows(result.stdout)
    assert not set(NO_NIX_SYSTEM) & set(rows)
    assert {"qemu-aarch64", "qemu-arm", "python3.11"} <= set(rows)  # the rest stays


@pytest.mark.parametrize("flag", ["-v", "--verbose"])
def test_status_verbose_shows_each_handler_nix_has_no_system_for(
    sandbox: Sandbox, flag: str,
) -> None:
    result = sandbox.run("status", flag)
    assert result.returncode == 1, result.stderr
    assert "no Nix system:" not in result.stdout
    lines = result.stdout.splitlines()
    rows = _handler_rows(result.stdout)
    assert [name for name in rows if name in NO_NIX_SYSTEM] == NO_NIX_SYSTEM
    for name in NO_NIX_SYSTEM:
        row = next(i for i, ln in enumerate(lines) if ln.split()[:1] == [name])
        assert lines[row + 1].strip().startswith("Nix has no system for "), name


def test_status_json_keeps_every_handler_nix_has_no_system_for(sandbox: Sandbox) -> None:
    page = sandbox.run("status").stdout
    handlers = {h["name"]: h for h in status_json(sandbox)["handlers"]}
    assert page.splitlines()[0].endswith(f", {len(handlers)} handlers)")
    for name in NO_NIX_SYSTEM:
        assert handlers[name]["platform"] is None
        assert handlers[name]["note"].startswith("Nix has no system for "), name
    assert [n for n, h in handlers.items()
            if (h["note"] or "").startswith("Nix has no system")] == NO_NIX_SYSTEM


@pytest.mark.parametrize("registrar", REGISTRARS)
def test_status_folds_exactly_the_handlers_nix_has_no_system_for(
    sandbox: Sandbox, registrar: str,
) -> None:
    """Any other reason to declare nothing (the host's own system, i686 on x86_64, disabled,
    not ELF) keeps its own row with its note; FEX on an x86_64 host shows two of them."""
    sandbox.use_registrar(registrar)
    handlers = status_json(sandbox)["handlers"]
    no_system = [h["name"] for h in handlers
                 if (h["note"] or "").startswith("Nix has no system for ")]
    page = sandbox.run("status").stdout
    folds = [ln for ln in page.splitlines() if ln.startswith("  no Nix system:")]
    assert folds == ([f"  no Nix system: {' '.join(no_system)}"] if no_system else []), page
    assert _handler_rows(page) == [h["name"] for h in handlers if h["name"] not in no_system]


def test_a_templated_nix_conf_that_includes_binfmtd_conf_is_never_written(
    sandbox: Sandbox,
) -> None:
    template = "# rendered by configuration management\nsandbox = true\n!include binfmtd.conf\n"
    sandbox.nix_conf.write_text(template)
    result = sandbox.run("sync")
    assert result.returncode == 0, result.stderr
    own = sandbox.nix_conf.parent / "binfmtd.conf"
    assert "extra-extra-platforms = " in own.read_text()
    assert "aarch64-linux" in own.read_text()
    assert sandbox.nix_conf.read_text() == template
    assert sandbox.run("sync", "--check").returncode == 0
    assert len(sandbox.restarts) == 1
    # The control: the same file without the include line gets the block itself.
    sandbox.nix_conf.write_text(template.replace("!include binfmtd.conf\n", ""))
    assert sandbox.run("sync").returncode == 0
    assert "extra-extra-platforms" in sandbox.nix_conf.read_text()


# --- includes, resolved as Nix resolves them -----------------------------------------


def test_a_relative_include_is_read_where_nix_reads_it(sandbox: Sandbox) -> None:
    """`include extra.conf` means the file beside nix.conf, and what that file includes
    is relative to its own folder: validation must read them there, or it refuses a file
    Nix itself reads."""
    folder = sandbox.nix_conf.parent
    (folder / "extra.conf").write_text("connect-timeout = 7\ninclude sub/more.conf\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "more.conf").write_text("cores = 3\n")
    sandbox.nix_conf.write_text(ORIGINAL + "include extra.conf\n!include absent.conf\n")
    synced = sandbox.run("sync")
    assert synced.returncode == 0, synced.stderr
    report = status_json(sandbox)
    assert report["in_sync"], report["problems"]
    assert (report["effective"]["connect-timeout"], report["effective"]["cores"]) == ("7", "3")


def test_a_missing_include_is_named_by_its_real_path(sandbox: Sandbox) -> None:
    sandbox.nix_conf.write_text(ORIGINAL + "include absent.conf\n")
    refused = sandbox.run("sync")
    assert refused.returncode == 2
    absent = sandbox.nix_conf.parent / "absent.conf"
    assert refused.stderr == (
        f"binfmtd: {sandbox.nix_conf}: Nix rejects it: error: file '{absent}' included from "
        f"'{sandbox.nix_conf}' not found (it did so before binfmtd's change too: fix the "
        "file first)\n")
    (sandbox.nix_conf.parent / "absent.conf").write_text("")
    assert sandbox.run("sync").returncode == 0  # the control: with the file there


def test_the_determinate_file_is_validated_with_its_own_includes(sandbox: Sandbox) -> None:
    """nix.custom.conf holds the block, and includes a file of its own: its copy must
    still find it."""
    folder = sandbox.nix_conf.parent
    sandbox.nix_conf.write_text(ORIGINAL + "!include nix.custom.conf\n")
    (folder / "nix.custom.conf").write_text("include local.conf\n")
    (folder / "local.conf").write_text("max-jobs = 5\n")
    synced = sandbox.run("sync")
    assert synced.returncode == 0, synced.stderr
    assert "extra-extra-platforms" in (folder / "nix.custom.conf").read_text()
    assert status_json(sandbox)["effective"]["max-jobs"] == "5"
