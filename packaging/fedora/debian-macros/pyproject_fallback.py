"""What Fedora's pyproject-rpm-macros do, for rpmbuild on a machine that lacks them (Debian).

build.sh loads pyproject.macros (beside this file) only where rpm does not define
%pyproject_wheel; each of those macros calls one command here:

    wheel         %pyproject_wheel          pip wheel, no build isolation, no deps
    install       %pyproject_install        the wheel into the buildroot at Fedora's paths
                                            (/usr/lib/pythonX.Y/site-packages), shebangs
                                            with %py3_shebang_flags, RECORD kept aside
    save-files    %pyproject_save_files     %{pyproject_files} for `%files -f`, with the
                                            License-File entries as %license (-l: at least
                                            one), and the importable modules
    check-import  %pyproject_check_import   import every saved module from the buildroot

Only what binfmtd's spec uses is implemented: top-level names for save-files (no globs,
no +auto). Anything else is an error, never a silent difference from Fedora.
"""

from __future__ import annotations

import argparse
import fnmatch
import keyword
import os
import subprocess
import sys
from email.parser import Parser
from pathlib import Path


def fail(message: str) -> None:
    print(f"pyproject_fallback: {message}", file=sys.stderr)
    raise SystemExit(1)


def in_root(buildroot: Path, path: str) -> Path:
    return buildroot / path.lstrip("/")


def cmd_wheel(args: argparse.Namespace) -> None:
    Path(args.builddir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TMPDIR=args.builddir)
    subprocess.run(
        [sys.executable, "-Bs", "-m", "pip", "wheel", "--wheel-dir", args.wheeldir,
         "--no-deps", "--use-pep517", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--no-clean", "--progress-bar", "off", "--verbose",
         "."],
        check=True, env=env,
    )


def cmd_install(args: argparse.Namespace) -> None:
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    wheels = sorted(Path(args.wheeldir).glob("*.whl"))
    if len(wheels) != 1:
        fail(f"%pyproject_install wants one wheel in {args.wheeldir}, found {len(wheels)}")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    scheme = {
        "purelib": args.sitelib,
        "platlib": args.sitelib,
        "scripts": args.bindir,
        "data": args.prefix,
        "headers": f"{args.prefix}/include/python{version}",
    }
    destination = SchemeDictionaryDestination(
        scheme, interpreter=args.interpreter, script_kind="posix", destdir=args.buildroot,
    )
    with WheelFile.open(wheels[0]) as source:
        install(source, destination, additional_metadata={"INSTALLER": b"rpm\n"})

    buildroot = Path(args.buildroot)
    sitelib = in_root(buildroot, args.sitelib)
    distinfos = sorted(sitelib.glob("*.dist-info"))
    if len(distinfos) != 1:
        fail(f"expected one .dist-info in {sitelib}, found {len(distinfos)}")
    record = distinfos[0] / "RECORD"
    installed = []
    for line in record.read_text().splitlines():
        relative = line.rsplit(",", 2)[0]
        if relative:
            path = os.path.normpath(os.path.join(args.sitelib, relative))
            installed.append(path)
    Path(args.record).write_text("".join(f"{path}\n" for path in installed))
    # As Fedora's %pyproject_install: RECORD and REQUESTED are not packaged (PEP 627).
    for name in ("RECORD", "REQUESTED"):
        (distinfos[0] / name).unlink(missing_ok=True)

    # As %py3_shebang_fix (Fedora's pathfix.py): `#! /usr/bin/python3 -sP`, a space after
    # `#!`, in the installed commands.
    bindir = in_root(buildroot, args.bindir)
    if args.shebang_flags and bindir.is_dir():
        for script in sorted(bindir.iterdir()):
            data = script.read_bytes()
            first, newline, rest = data.partition(b"\n")
            if first == f"#!{args.interpreter}".encode():
                flags = args.shebang_flags.encode()
                script.write_bytes(b"#! " + args.interpreter.encode() + b" -" + flags
                                   + newline + rest)


def valid_module_name(name: str) -> bool:
    """As Fedora: an identifier, not a keyword, not private (so never __main__)."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


def module_names(relative: Path) -> set[str]:
    if relative.suffix != ".py":
        return set()
    parts = [*relative.parts[:-1], relative.stem]
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(valid_module_name(part) for part in parts):
        return set()
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


def cmd_save_files(args: argparse.Namespace) -> None:
    buildroot = Path(args.buildroot)
    sitelib = in_root(buildroot, args.sitelib)
    installed = [Path(line) for line in Path(args.record).read_text().splitlines() if line]
    distinfos = sorted(sitelib.glob("*.dist-info"))
    if len(distinfos) != 1:
        fail(f"expected one .dist-info in {sitelib}, found {len(distinfos)}")
    distinfo = Path(args.sitelib) / distinfos[0].name

    metadata = Parser().parsestr(
        (distinfos[0] / "METADATA").read_text(encoding="utf-8"), headersonly=True)
    license_files = metadata.get_all("License-File") or []
    license_dirs = (distinfo / "licenses", distinfo)

    lines = [f"%dir {distinfo}"]
    licenses = []
    for path in installed:
        if distinfo not in path.parents:
            continue
        if path.parent == distinfo and path.name in ("RECORD", "REQUESTED"):
            continue
        for parent in reversed(path.parents):
            if distinfo in parent.parents and f"%dir {parent}" not in lines:
                lines.append(f"%dir {parent}")
        if any(license_dir in path.parents and str(path.relative_to(license_dir))
               in license_files for license_dir in license_dirs):
            licenses.append(path)
            lines.append(f"%license {path}")
        else:
            lines.append(str(path))
    if args.l and not licenses:
        fail("%pyproject_save_files -l: no License-File found in the dist-info METADATA")

    modules: set[str] = set()
    for name in args.names:
        if any(char in name for char in "*?[") or name.startswith("+"):
            fail(f"this stand-in takes top-level names only, not {name!r}")
        package = Path(args.sitelib) / name
        module = Path(args.sitelib) / f"{name}.py"
        if in_root(buildroot, str(package)).is_dir():
            # The whole folder: it owns its __pycache__, which brp-python-bytecompile
            # writes after %install.
            lines.append(f"{package}/")
        elif in_root(buildroot, str(module)).is_file():
            lines.append(str(module))
            lines.append(f"{Path(args.sitelib)}/__pycache__/{name}.cpython-*.pyc")
        else:
            fail(f"{name!r} is neither a package nor a module in {args.sitelib}")
        for path in installed:
            if path == module or package in path.parents:
                modules |= module_names(path.relative_to(args.sitelib))
    Path(args.output_files).write_text("".join(f"{line}\n" for line in lines))
    Path(args.output_modules).write_text("".join(f"{name}\n" for name in sorted(modules)))


def cmd_check_import(args: argparse.Namespace) -> None:
    path = Path(args.modules)
    if not path.is_file():
        fail("%pyproject_check_import only works when %pyproject_save_files is used")
    names = [name for name in path.read_text().split() if name]
    if args.t:
        names = [name for name in names if "." not in name]
    names = [name for name in names
             if not any(fnmatch.fnmatchcase(name, glob) for glob in args.exclude)]
    if not names:
        fail("no modules to check")
    env = dict(os.environ, PYTHONPATH=args.sitelib)
    program = "import importlib, sys\nfor name in sys.argv[1:]:\n" \
              "    print('Check import:', name)\n    importlib.import_module(name)\n"
    subprocess.run([sys.executable, "-s", "-c", program, *names], check=True, env=env)


def cmd_buildrequires(args: argparse.Namespace) -> None:
    """What %pyproject_buildrequires prints, one BuildRequires a line, as Fedora's generator
    does: pip and packaging (what the macros themselves run), the build backend's own
    requirements and what it asks for building a wheel, then the project's run-time
    dependencies, each as python3dist(NAME) with its version bounds, markers evaluated for
    this Python."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads(Path("pyproject.toml").read_text())
    hook = subprocess.run(
        [sys.executable, "-c", "import contextlib, json, sys, setuptools.build_meta as b\n"
         "with contextlib.redirect_stdout(sys.stderr):\n"
         "    wanted = b.get_requires_for_build_wheel()\n"
         "print(json.dumps(wanted))"],
        check=True, capture_output=True, text=True).stdout
    import json

    wanted = ["pip >= 19", "packaging", *project["build-system"]["requires"],
              *json.loads(hook), *project["project"].get("dependencies", [])]
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = f"python3dist({requirement.name.lower()})"
        bounds = sorted(requirement.specifier, key=str)
        print(" with ".join(f"{name} {spec.operator} {spec.version}" for spec in bounds)
              if bounds else name)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)

    wheel = commands.add_parser("wheel")
    wheel.add_argument("--wheeldir", required=True)
    wheel.add_argument("--builddir", required=True)
    wheel.set_defaults(run=cmd_wheel)

    install = commands.add_parser("install")
    for option in ("--wheeldir", "--buildroot", "--sitelib", "--prefix", "--bindir",
                   "--interpreter", "--record"):
        install.add_argument(option, required=True)
    install.add_argument("--shebang-flags", default="")
    install.set_defaults(run=cmd_install)

    save = commands.add_parser("save-files")
    for option in ("--buildroot", "--sitelib", "--record", "--output-files",
                   "--output-modules"):
        save.add_argument(option, required=True)
    save.add_argument("-l", action="store_true")
    save.add_argument("-L", action="store_true")
    save.add_argument("names", nargs="+")
    save.set_defaults(run=cmd_save_files)

    needs = commands.add_parser("buildrequires")
    needs.set_defaults(run=cmd_buildrequires)

    check = commands.add_parser("check-import")
    check.add_argument("--modules", required=True)
    check.add_argument("--sitelib", required=True)
    check.add_argument("-t", action="store_true")
    check.add_argument("--exclude", action="append", default=[])
    check.set_defaults(run=cmd_check_import)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
