"""A builder's /etc/nix/machines line: systems Nix really has in effect, Nix's order."""

from __future__ import annotations

import base64
from pathlib import Path

from binfmtd.builder import (
    BuilderOptions,
    builder_line,
    encode_host_key,
    read_host_key,
)

EFFECTIVE = {"system": "x86_64-linux", "max-jobs": "4",
             "extra-platforms": "i686-linux x86_64-v1-linux aarch64-linux",
             "system-features": "benchmark big-parallel kvm nixos-test"}
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq7 root@builder\n"


def test_systems_are_the_hosts_own_and_what_is_declared_and_in_effect() -> None:
    line = builder_line("x86_64-linux", ("aarch64-linux", "riscv64-linux"), EFFECTIVE,
                        BuilderOptions(), None, "builder")
    # riscv64 is in the block but nix-daemon has not read it: not offered yet.
    assert line.systems == ("x86_64-linux", "aarch64-linux")
    assert line.render() == ("ssh://root@builder x86_64-linux,aarch64-linux - 4 1 "
                             "benchmark,big-parallel,kvm,nixos-test - -")


def test_options_fill_their_fields_in_nixs_order() -> None:
    key = encode_host_key(ED25519)
    line = builder_line("x86_64-linux", ("aarch64-linux",), EFFECTIVE,
                        BuilderOptions(uri="ssh-ng://nix@b1", ssh_key="/root/.ssh/b1",
                                       max_jobs=8, speed_factor=2,
                                       mandatory_features=("big-parallel",)),
                        key, "ignored")
    assert line.render().split(" ") == [
        "ssh-ng://nix@b1", "x86_64-linux,aarch64-linux", "/root/.ssh/b1", "8", "2",
        "benchmark,big-parallel,kvm,nixos-test", "big-parallel", key]
    assert line.to_json()["line"] == line.render()
    assert line.to_json()["systems"] == ["x86_64-linux", "aarch64-linux"]


def test_max_jobs_auto_is_one_per_core_and_nothing_in_effect_offers_only_the_host() -> None:
    line = builder_line("x86_64-linux", ("aarch64-linux",), {"max-jobs": "auto"},
                        BuilderOptions(), None, "b")
    assert line.systems == ("x86_64-linux",) and line.max_jobs >= 1
    assert line.supported_features == () and " - - -" in line.render()


def test_the_host_key_is_type_and_key_in_base64_without_the_comment(tmp_path: Path) -> None:
    assert base64.b64decode(encode_host_key(ED25519) or "") == (
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq7")
    assert encode_host_key("not a key") is None
    assert read_host_key(tmp_path) is None
    (tmp_path / "ssh_host_rsa_key.pub").write_text("ssh-rsa AAAAB3Nz root@b\n")
    (tmp_path / "ssh_host_ed25519_key.pub").write_text(ED25519)
    assert read_host_key(tmp_path) == encode_host_key(ED25519)  # the strongest first

