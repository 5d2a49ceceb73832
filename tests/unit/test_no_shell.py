"""binfmtd runs as root and reads interpreter paths from the kernel: it never hands data
to a shell. Every program runs through proc.run_program as an argv list."""

from __future__ import annotations

import ast
from pathlib import Path

import binfmtd

SOURCES = sorted(Path(binfmtd.__file__).parent.rglob("*.py"))
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
               ("subprocess", "getstatusoutput")}


def calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def test_no_shell_anywhere() -> None:
    offenders = []
    for source in SOURCES:
        tree = ast.parse(source.read_text(), str(source))
        for call in calls(tree):
            func = call.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
                    func.value.id, func.attr) in SHELL_CALLS:
                offenders.append(f"{source.name}:{call.lineno} {func.value.id}.{func.attr}")
            for keyword in call.keywords:
                if keyword.arg == "shell" and not (
                        isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    offenders.append(f"{source.name}:{call.lineno} shell=")
    assert offenders == []


def test_only_proc_starts_programs() -> None:
    starters = [source.name for source in SOURCES
                if "subprocess" in source.read_text() and source.name != "proc.py"]
    assert starters == []
