"""`--json` as an interface: every command's real output is valid against the JSON Schema
that ships in the package (binfmtd/output.schema.json), matches exactly one kind of object
in it, carries `"version"`, and shows no temporary path of binfmtd's own.

The schema says `unevaluatedProperties: false`, so a key the code adds without the schema
(and docs/json.md, kept in step below) fails here.
"""

from __future__ import annotations

import json
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from binfmtd.errors import JSON_VERSION
from tests.cli.sandbox import Sandbox
from tests.support.kernel import PrivateBinfmt
from tests.support.parts import DATA, REPO, require

SCHEMA: dict[str, Any] = json.loads(
    resources.files("binfmtd").joinpath("output.schema.json").read_text())
KINDS = ("status", "sync", "doctor", "builder_line")
REGISTRARS = sorted(p.name for p in (DATA / "binfmt_misc").iterdir() if p.is_dir())
# binfmtd's own temporary folders (files.temp_folder): never in what it prints.
OWN_TEMP = re.compile(r"binfmtd-(validate|staged|doctor)[-\w]*")


def checked(printed: str, kind: str) -> dict[str, Any]:
    """`printed` as the schema's `kind` of object, and as no other kind: its errors against
    that kind are the ones reported."""
    found = json.loads(printed)
    jsonschema.validate(found, _as(kind), cls=jsonschema.Draft202012Validator)
    jsonschema.validate(found, SCHEMA, cls=jsonschema.Draft202012Validator)  # the oneOf
    assert [k for k in KINDS if k != kind and _valid_as(found, k)] == []
    assert found["version"] == JSON_VERSION
    assert OWN_TEMP.search(printed) is None, OWN_TEMP.search(printed)
    return found  # type: ignore[no-any-return]


def _as(kind: str) -> dict[str, Any]:
    return {**SCHEMA, "oneOf": [{"$ref": f"#/$defs/{kind}"}]}


def _valid_as(found: object, kind: str) -> bool:
    return jsonschema.Draft202012Validator(_as(kind)).is_valid(found)


def test_the_schema_is_a_valid_2020_12_schema_and_refuses_what_it_should() -> None:
    """Positive controls: the checks below would see a missing version, a stray key, a
    wrong type."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    good = {"version": 1, "ok": True, "platforms": []}
    assert _valid_as(good, "doctor")
    assert not _valid_as({"ok": True, "platforms": []}, "doctor")
    assert not _valid_as({**good, "typo": 1}, "doctor")
    assert not _valid_as({**good, "ok": "yes"}, "doctor")


@pytest.mark.parametrize("registrar", REGISTRARS)
def test_status_json_of_every_registrar_is_a_status(sandbox: Sandbox, registrar: str) -> None:
    sandbox.use_registrar(registrar)
    for args in (("status", "--json"), ("status", "--json", "-v")):
        shown = sandbox.run(*args)
        assert shown.returncode in (0, 1), shown.stderr
        found = checked(shown.stdout, "status")
        assert len(found["handlers"]) == len(
            [p for p in sandbox.binfmt_misc.iterdir() if p.name not in ("register", "status")])


def test_sync_json_before_after_and_check_are_syncs(sandbox: Sandbox) -> None:
    check = sandbox.run("sync", "--check", "--json")
    assert check.returncode == 1, check.stderr
    assert checked(check.stdout, "sync")["changed"] is True
    synced = sandbox.run("sync", "--json")
    assert synced.returncode == 0, synced.stderr
    found = checked(synced.stdout, "sync")
    assert (found["changed"], found["in_sync"]) == (True, True), found
    again = sandbox.run("sync", "--json", "--no-restart")
    assert checked(again.stdout, "sync")["changed"] is False


def test_effective_names_the_real_files_never_a_staged_copy(sandbox: Sandbox) -> None:
    """Nix reads a staged copy when it validates (sync) and for a nix.conf of another name
    (status); what it says of the copy's folder is said of the real one."""
    require(sandbox.run("status", "--json").returncode in (0, 1), "binfmtd does not run")
    folder = sandbox.nix_conf.parent
    synced = json.loads(sandbox.run("sync", "--json").stdout)
    if synced["effective"] is None:
        require(False, "Nix is not installed: there is no reading to check")
    assert synced["effective"]["builders"] == f"@{folder}/machines", synced["effective"]
    other = folder / "fleet.conf"
    other.write_text(sandbox.nix_conf.read_text())
    shown = sandbox.run("status", "--json", env={"BINFMTD_NIX_CONF": str(other)})
    found = checked(shown.stdout, "status")
    assert found["effective"]["builders"] == f"@{folder}/machines", found["effective"]


def test_builder_line_json_stands_alone_and_inside_status(sandbox: Sandbox) -> None:
    line = sandbox.run("builder-line", "--json", "--uri", "ssh://builder", "--jobs", "2")
    assert line.returncode == 0, line.stderr
    found = checked(line.stdout, "builder_line")
    assert found["uri"] == "ssh://builder", found
    nested = json.loads(sandbox.run("status", "--json").stdout)["builder"]
    if nested is not None:  # null where Nix could not be asked
        assert "version" not in nested and _valid_as({**nested, "version": 1}, "builder_line")


def test_doctor_json_passing_and_failing_is_a_doctor(tmp_path: Path,
                                                     real_binfmt: PrivateBinfmt) -> None:
    """doctor runs programs, so it runs inside a private binfmt_misc: one system registered
    (every check passes) and one asked for that nothing emulates (a failing check)."""
    require(Path("/usr/libexec/qemu-binfmt").is_dir(), "qemu-user-static is not installed")
    nix_conf = tmp_path / "nix.conf"
    nix_conf.write_text("sandbox = true\n")
    config = tmp_path / "config.toml"
    config.write_text('registration-prefix = "binfmtd-json-"\nrestart = false\n'
                      'emulated-systems = ["aarch64-linux", "riscv64-linux"]\n')
    env = {**os.environ, "BINFMTD_NIX_CONF": str(nix_conf), "BINFMTD_CONFIG": str(config),
           "BINFMTD_BINFMT_D": str(tmp_path)}
    env.pop("BINFMTD_BINFMT_MISC", None)

    def binfmtd(*args: str) -> Any:
        return real_binfmt.run([sys.executable, "-m", "binfmtd", *args], env=env)

    assert binfmtd("register", "aarch64-linux").returncode == 0
    found = checked(binfmtd("doctor", "--json").stdout, "doctor")
    by_system = {p["system"]: p["ok"] for p in found["platforms"]}
    assert by_system == {"aarch64-linux": True,
                                              "riscv64-linux": False}, found
    assert found["ok"] is False


def _schema_keys(definition: str) -> set[str]:
    """The keys the schema gives an object (following its one `$ref` to a base)."""
    body = SCHEMA["$defs"][definition]
    keys = set(body.get("properties", {}))
    if "$ref" in body:
        keys |= _schema_keys(body["$ref"].rsplit("/", 1)[1])
    return keys


@pytest.mark.parametrize("definition", ["report", "sync", "handler", "doctor", "builder_line"])
def test_docs_json_md_describes_every_key_of_the_schema(definition: str) -> None:
    documented = set(re.findall(r"^\| `(\w+)` \|", (REPO / "docs/json.md").read_text(),
                                flags=re.MULTILINE))
    assert _schema_keys(definition) - documented == set()
