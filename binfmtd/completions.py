"""Shell completions for bash, zsh and fish, written from binfmtd's own parser.

    python3 -m binfmtd.completions bash|zsh|fish

The .deb and the RPM run this at build time and install each file where its shell looks
(bash-completion, zsh's vendor-completions, fish's vendor_completions.d); a pip user can
do the same. The parser is the one source: a new command or option completes at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import NamedTuple

from .cli import COMMANDS, build_parser
from .emulators import EMULATIONS

SHELLS = ("bash", "zsh", "fish")


class Option(NamedTuple):
    """One option as a shell completes it."""

    names: tuple[str, ...]  # -v, --verbose
    help: str
    value: str  # "": takes no value; "file", "dir", "word", or "choice"
    choices: tuple[str, ...] = ()


class Spec(NamedTuple):
    """What completes after `binfmtd` and after each command."""

    global_options: tuple[Option, ...]
    commands: dict[str, tuple[str, tuple[Option, ...], tuple[str, ...]]]  # summary, options,
    # and the words its positional arguments take (SYSTEM: the systems binfmtd registers)


def spec() -> Spec:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = {}
    for name, sub in subparsers.choices.items():
        positional = any(not a.option_strings for a in sub._actions)
        commands[name] = (COMMANDS[name].summary, _options(sub),
                          tuple(sorted(EMULATIONS)) if positional else ())
    return Spec(_options(parser), commands)


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    found = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        takes = action.nargs != 0
        kind = ("choice" if action.choices else "dir" if action.metavar == "DIR"
                else "file" if action.metavar == "PATH" else "word") if takes else ""
        found.append(Option(tuple(action.option_strings), _plain(action.help or ""), kind,
                            tuple(str(c) for c in action.choices or ())))
    return tuple(found)


def _plain(text: str) -> str:
    return text.replace("'", "").replace('"', "").replace("\n", " ")


def bash(s: Spec) -> str:
    """For bash-completion: /usr/share/bash-completion/completions/binfmtd."""
    valued = sorted({n for o in _all_options(s) if o.value for n in o.names})
    lines = [
        "# bash completion for binfmtd (written by python3 -m binfmtd.completions bash)",
        "_binfmtd() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local command="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
        f"            {'|'.join(valued)}) ((i++)) ;;",
        "            -*) ;;",
        '            *) command="${COMP_WORDS[i]}"; break ;;',
        "        esac",
        "    done",
        '    case "$prev" in',
    ]
    for option in _all_options(s):
        if option.value:
            lines.append(f"        {'|'.join(option.names)}) {_bash_value(option)}; return ;;")
    lines += ["    esac", '    case "$command" in']
    globals_ = " ".join(n for o in s.global_options for n in o.names)
    lines.append(f'        "") COMPREPLY=($(compgen -W "{" ".join(s.commands)} {globals_}" '
                 '-- "$cur")) ;;')
    for name, (_summary, options, words) in s.commands.items():
        names = " ".join(n for o in options for n in o.names)
        lines.append(f'        {name}) COMPREPLY=($(compgen -W "{names} {" ".join(words)}" '
                     '-- "$cur")) ;;')
    lines += ["    esac", "}", "complete -F _binfmtd binfmtd", ""]
    return "\n".join(lines)


def _bash_value(option: Option) -> str:
    if option.value == "choice":
        return f'COMPREPLY=($(compgen -W "{" ".join(option.choices)}" -- "$cur"))'
    if option.value in ("file", "dir"):
        flag = "-d" if option.value == "dir" else "-f"
        return f'COMPREPLY=($(compgen {flag} -- "$cur"))'
    return "COMPREPLY=()"


def zsh(s: Spec) -> str:
    """For zsh: /usr/share/zsh/vendor-completions/_binfmtd."""
    lines = ["#compdef binfmtd",
             "# zsh completion for binfmtd (written by python3 -m binfmtd.completions zsh)",
             "_binfmtd() {", "  local -a commands", "  commands=("]
    lines += [f"    '{name}:{_plain(summary)}'" for name, (summary, _o, _w) in s.commands.items()]
    lines += ["  )", "  _arguments -C \\"]
    lines += [f"    {_zsh_option(o)} \\" for o in s.global_options]
    lines += ["    '1:command:->command' \\", "    '*::argument:->argument'",
              "  case $state in",
              "    command) _describe 'binfmtd command' commands ;;",
              "    argument)", "      case $words[1] in"]
    for name, (_summary, options, words) in s.commands.items():
        specs = " ".join(_zsh_option(o) for o in options)
        rest = f" '*:system:({' '.join(words)})'" if words else ""
        lines.append(f"        {name}) _arguments {specs}{rest} ;;")
    lines += ["      esac ;;", "  esac", "}", '_binfmtd "$@"', ""]
    return "\n".join(lines)


def _zsh_option(option: Option) -> str:
    value = {"": "", "file": ":path:_files", "dir": ":folder:_files -/", "word": ":value:",
             "choice": f":value:({' '.join(option.choices)})"}[option.value]
    names = "{" + ",".join(option.names) + "}" if len(option.names) > 1 else option.names[0]
    described = option.help.replace("[", "(").replace("]", ")").replace(":", "")
    return f"'{names}[{described}]{value}'"


def fish(s: Spec) -> str:
    """For fish: /usr/share/fish/vendor_completions.d/binfmtd.fish."""
    commands = " ".join(s.commands)
    lines = ["# fish completion for binfmtd (written by python3 -m binfmtd.completions fish)",
             "complete -c binfmtd -f"]
    lines += [f"complete -c binfmtd -n 'not __fish_seen_subcommand_from {commands}' "
              f"-a {name} -d '{_plain(summary)}'"
              for name, (summary, _o, _w) in s.commands.items()]
    lines += [_fish_option(o, "") for o in s.global_options]
    for name, (_summary, options, words) in s.commands.items():
        # The global options complete anywhere already.
        lines += [_fish_option(o, name) for o in options if o not in s.global_options]
        if words:
            lines.append(f"complete -c binfmtd -n '__fish_seen_subcommand_from {name}' "
                         f"-a '{' '.join(words)}'")
    return "\n".join(lines) + "\n"


def _fish_option(option: Option, command: str) -> str:
    where = f" -n '__fish_seen_subcommand_from {command}'" if command else ""
    names = "".join(f" -l {n[2:]}" if n.startswith("--") else f" -s {n[1:]}"
                    for n in option.names)
    value = {"": "", "file": " -r -F", "dir": " -r -F", "word": " -x",
             "choice": f" -x -a '{' '.join(option.choices)}'"}[option.value]
    return f"complete -c binfmtd{where}{names}{value} -d '{option.help}'"


def _all_options(s: Spec) -> list[Option]:
    """Every option once: each command also takes the global ones (after its name)."""
    every = [*s.global_options, *(o for _sum, options, _w in s.commands.values()
                                  for o in options)]
    return list(dict.fromkeys(every))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in SHELLS:
        print(f"usage: python3 -m binfmtd.completions {'|'.join(SHELLS)}", file=sys.stderr)
        return 2
    sys.stdout.write({"bash": bash, "zsh": zsh, "fish": fish}[argv[0]](spec()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
