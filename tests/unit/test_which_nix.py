"""Which Nix binfmtd asks: systemd's ExecStart, `nix --version`, and the install hint."""

from __future__ import annotations

import pytest

from binfmtd.nixtool import exec_start_path, nix_install_hint, parse_version

UPSTREAM_UNIT = ("ExecStart={ path=/nix/var/nix/profiles/default/bin/nix-daemon ; "
                 "argv[]=/nix/var/nix/profiles/default/bin/nix-daemon --daemon ; "
                 "ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; "
                 "code=(null) ; status=0/0 }\n")


def test_the_folder_of_nix_daemon_comes_from_the_units_exec_start() -> None:
    assert exec_start_path(UPSTREAM_UNIT) == "/nix/var/nix/profiles/default/bin/nix-daemon"
    assert exec_start_path("ExecStart={ path=/usr/bin/nix-daemon ; argv[]=/usr/bin/nix-daemon "
                           "--daemon ; ignore_errors=no }") == "/usr/bin/nix-daemon"
    assert exec_start_path("ExecStart=\n") is None  # no such unit
    assert exec_start_path("") is None


@pytest.mark.parametrize(("printed", "version"), [
    ("nix (Nix) 2.8.0\n", "2.8.0"),
    ("nix (Nix) 2.34.8\n", "2.34.8"),
    ("nix (Determinate Nix 3.8.2) 2.30.1\n", "2.30.1"),
    ("", None),
    ("error: something\n", None),
])
def test_the_version_is_the_last_word_nix_prints(printed: str, version: str | None) -> None:
    assert parse_version(printed) == version


@pytest.mark.parametrize(("os_release", "hint"), [
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n', "apt-get install nix-bin"),
    ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n', "apt-get install nix-bin"),
    ('NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n', "apt-get install nix-bin"),
    ('NAME="Fedora Linux"\nID=fedora\n', "dnf install nix-daemon"),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "dnf install nix-daemon"),
    ('ID=arch\n', "install Nix with its own installer (nixos.org/download)"),
    ("", "install Nix with its own installer (nixos.org/download)"),
])
def test_the_install_hint_names_the_distributions_own_command(os_release: str,
                                                              hint: str) -> None:
    assert nix_install_hint(os_release) == hint


def test_nixs_colours_never_reach_the_user() -> None:
    """Nix 2.8 colours an error it did not catch even into a pipe, NO_COLOR or not."""
    from binfmtd.nixtool import _last_error

    said = ("terminate called after throwing an instance of 'nix::Error'\n"
            "  what():  \x1b[31;1merror:\x1b[0m not an absolute path: '\x1b[35;1m.\x1b[0m'\n")
    assert _last_error(said) == "what():  error: not an absolute path: '.'"
