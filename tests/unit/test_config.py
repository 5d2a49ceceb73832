"""config.toml: optional, defaults that need no file, one clear line for any mistake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from binfmtd.config import Config, RestartPolicy, read_config
from binfmtd.errors import BinfmtdError
from tests.support.parts import require


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_no_file_means_defaults() -> None:
    config = read_config(Path("/nonexistent/config.toml"), required=False)
    assert config == Config()
    assert config.restart.unit == "nix-daemon.service"
    assert config.declare_armv6l and not config.declare_i686


def test_a_named_file_that_is_missing_is_an_error() -> None:
    with pytest.raises(BinfmtdError, match="no such file"):
        read_config(Path("/nonexistent/config.toml"), required=True)


def test_every_key_is_read(tmp_path: Path) -> None:
    config = read_config(write(tmp_path, """
nix-conf-target = "/etc/nix/nix.custom.conf"
ignore-platforms = ["mips-linux"]
declare-armv6l = false
declare-i686 = true
restart = ["/usr/local/sbin/restart-nix", "--now"]
debounce-seconds = 0.5
resync-seconds = 60
restart-interval-seconds = 30
emulated-systems = ["riscv64-linux", "aarch64-linux", "x86_64-linux"]
replace-handlers = true
registration-prefix = "site-"
"""), required=True)
    assert config == Config(
        nix_conf_target="/etc/nix/nix.custom.conf",
        ignore_platforms=frozenset({"mips-linux"}),
        declare_armv6l=False,
        declare_i686=True,
        restart=RestartPolicy(command=("/usr/local/sbin/restart-nix", "--now")),
        debounce_seconds=0.5,
        resync_seconds=60.0,
        restart_interval_seconds=30.0,
        emulated_systems=("aarch64-linux", "riscv64-linux", "x86_64-linux"),
        replace_handlers=True,
        registration_prefix="site-",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("declare-armv7 = true", "unknown key 'declare-armv7'"),
        ("declare-i686 = 'yes'", "declare-i686 must be true or false"),
        ("ignore-platforms = 'mips-linux'", "ignore-platforms must be a list of strings"),
        ("restart = 3", "restart must be a unit name"),
        ("restart = true", "restart must be a unit name"),
        ("restart = []", "restart must be a unit name"),
        ("debounce-seconds = -1", "debounce-seconds must be a positive number"),
        ("debounce-seconds = true", "debounce-seconds must be a positive number"),
        ("nix-conf-target = ''", "nix-conf-target must be a non-empty string"),
        ("declare-i686 = ", "not valid TOML"),
        ('emulated-systems = ["aarch64"]',
         r"emulated-systems: 'aarch64' is not a system binfmtd knows \(did you mean "
         r"aarch64-linux\?\)"),
        ('emulated-systems = ["arm64-linux"]', r"did you mean aarch64-linux\?"),
        ('ignore-platforms = ["mips-linux", "risc64-linux"]',
         r"ignore-platforms: 'risc64-linux' is not a system binfmtd knows \(did you mean "
         r"riscv64-linux\?\)"),
        ('ignore-platforms = ["vax-linux"]', r"'vax-linux' is not .* \(known: aarch64-linux "),
        ('emulated-systems = ["s390-linux"]', r"binfmtd cannot register s390-linux \(it can: "),
    ],
)
def test_mistakes_are_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BinfmtdError, match=message) as caught:
        read_config(write(tmp_path, text), required=True)
    assert "\n" not in str(caught.value)
    assert str(tmp_path / "config.toml") in str(caught.value)


def test_restart_false_means_never(tmp_path: Path) -> None:
    assert read_config(write(tmp_path, "restart = false"), required=True).restart.never


@pytest.mark.parametrize(
    ("mode", "owner", "message"),
    [
        (0o666, 0, "writable by group or others"),
        (0o620, 0, "writable by group or others"),
        (0o644, 4242, "owned by uid 4242, not root"),
    ],
)
def test_a_config_others_may_write_is_refused(tmp_path: Path, mode: int, owner: int,
                                              message: str) -> None:
    require(os.geteuid() == 0, "changing a file's owner needs root")
    path = write(tmp_path, "declare-i686 = true\n")
    path.chmod(mode)
    os.chown(path, owner, 0)
    with pytest.raises(BinfmtdError, match=message):
        read_config(path, required=True)


def test_a_root_owned_config_that_only_root_may_write_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "declare-i686 = true\n")
    path.chmod(0o644)
    assert read_config(path, required=True).declare_i686


def test_a_file_of_comments_only_means_defaults(tmp_path: Path) -> None:
    packaged = Path(__file__).parents[2] / "packaging" / "config.toml"
    assert read_config(packaged, required=True) == Config()
    assert read_config(write(tmp_path, "# restart = false\n\n   # x\n"), required=True) == Config()
    assert read_config(write(tmp_path, "# a comment\nrestart = false\n"),
                       required=True).restart.never
