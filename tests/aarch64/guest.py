"""The program the emulated arm64 machine runs at boot (tests/support/armvm.py puts it on the
payload disk and the image's unit runs it): each step of plan.json, in order, as root, and
after each one everything seen so far, written to out/result.json on the same disk.

It decides nothing and asserts nothing: the plan says what to do, the host's tests judge
what it saw. A step that raises is recorded with its error and the plan goes on, so one
failure shows beside every other result. Standard library only (Debian's python3 3.13);
the one wait with a deadline comes beside it on the disk (tests/support/waiting.py).

Steps (each has an "id" and a "do"):
  facts                    uname -m, binfmtd.service's state, the binfmt_misc entries
  status                   `binfmtd status --json`: exit status and the parsed object
  build                    a non-root user's nix-build through nix-daemon (NIX_REMOTE=daemon)
                           of `derivation`, the busybox for `system` beside it
  register / unregister    one write of `line` to register / -1 to the entry `name`
  mark                     remember nix-daemon.service's InvocationID
  await                    until nix.conf's managed block declares `declared` and not
                           `undeclared`, holds each of `contains`, and (with `restarted`)
                           nix-daemon runs anew since the last mark, or `timeout` passes
  install                  copy `source` (payload or machine path) to `target`, or link it
  write / read             a file's text
  run                      a command as root
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

PAYLOAD = Path(sys.argv[1] if len(sys.argv) > 1 else "/run/payload")
sys.path.insert(0, str(PAYLOAD))
from waiting import until  # type: ignore[import-not-found]  # noqa: E402  (copied beside it)

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
NIX_CONF = Path("/etc/nix/nix.conf")
BEGIN = "# BEGIN binfmtd managed block"
END = "# END binfmtd managed block"
USER = "alice"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

results: dict[str, Any] = {}
marked = {"invocation": ""}


def say(text: str) -> None:
    """A line on the serial console (journal+console): the host shows its end on failure."""
    print(f"binfmtd-aarch64: {text}", flush=True)


def save() -> None:
    out = PAYLOAD / "out" / "result.json"
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w") as file:
        json.dump(results, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, out)
    os.sync()


def run(argv: list[str], timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, errors="replace",
                          timeout=timeout, check=False, **kwargs)


def invocation() -> str:
    return run(["systemctl", "show", "--property=InvocationID", "--value",
                "nix-daemon.service"]).stdout.strip()


def block() -> str:
    """The managed block of nix.conf ('' without one)."""
    text = NIX_CONF.read_text()
    start = text.find(BEGIN)
    if start < 0:
        return ""
    end = text.find(END, start)
    return text[start:end + len(END)] if end >= 0 else text[start:]


def declared(text: str) -> list[str]:
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "extra-extra-platforms":
            return value.split()
    return []


def entries() -> list[str]:
    return sorted(p.name for p in BINFMT_MISC.iterdir() if p.name not in ("register", "status"))


# --- the steps --------------------------------------------------------------------------


def facts(step: dict[str, Any]) -> dict[str, Any]:
    return {"machine": os.uname().machine,
            "binfmtd": run(["systemctl", "is-active", "binfmtd.service"]).stdout.strip(),
            "enabled": run(["systemctl", "is-enabled", "binfmtd.service"]).stdout.strip(),
            "entries": entries(),
            "nix": run(["nix", "--version"]).stdout.strip()}


def status(step: dict[str, Any]) -> dict[str, Any]:
    done = run(["binfmtd", "status", "--json"])
    try:
        parsed = json.loads(done.stdout)
    except json.JSONDecodeError:
        parsed = None
    return {"exit": done.returncode, "json": parsed, "stderr": done.stderr[-2000:]}


def build(step: dict[str, Any]) -> dict[str, Any]:
    user = pwd.getpwnam(USER)
    folder = Path(user.pw_dir) / "builds" / step["id"]
    builder = folder / step["busybox_path"]
    builder.parent.mkdir(parents=True)
    shutil.copy(PAYLOAD / step["busybox"], builder)
    builder.chmod(0o755)
    (folder / step["file"]).write_text(step["derivation"])
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)
    env = {"PATH": PATH, "HOME": user.pw_dir, "USER": USER, "NIX_REMOTE": "daemon",
           "LANG": "C.UTF-8"}
    argv = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--",
            "nix-build", "--no-out-link", str(folder / step["file"]), *step["args"]]
    start = time.monotonic()
    done = run(argv, env=env, cwd=folder, timeout=step.get("timeout", 300))
    output = None
    if done.returncode == 0 and done.stdout.strip():
        output = Path(done.stdout.strip().splitlines()[-1]).read_text()
    return {"exit": done.returncode, "output": output, "stderr": done.stderr[-3000:],
            "seconds": round(time.monotonic() - start, 2)}


def register(step: dict[str, Any]) -> dict[str, Any]:
    fd = os.open(BINFMT_MISC / "register", os.O_WRONLY)  # one write: one line, as
    try:                                                # systemd-binfmt does
        os.write(fd, step["line"].encode())
    finally:
        os.close(fd)
    return {"entries": entries()}


def unregister(step: dict[str, Any]) -> dict[str, Any]:
    entry = BINFMT_MISC / step["name"]
    if entry.exists():
        entry.write_text("-1")
    return {"entries": entries()}


def mark(step: dict[str, Any]) -> dict[str, Any]:
    marked["invocation"] = invocation()
    return {"invocation": marked["invocation"]}


def await_(step: dict[str, Any]) -> dict[str, Any]:
    want, unwanted = set(step.get("declared", ())), set(step.get("undeclared", ()))

    def held() -> bool:
        text = block()
        now = set(declared(text))
        if not want <= now or unwanted & now:
            return False
        if not all(part in text for part in step.get("contains", ())):
            return False
        return not step.get("restarted") or invocation() not in ("", marked["invocation"])

    start = time.monotonic()
    ok = until(held, step.get("timeout", 60), interval=0.1) is not None
    return {"held": ok, "seconds": round(time.monotonic() - start, 2), "block": block(),
            "invocation": invocation()}


def install(step: dict[str, Any]) -> dict[str, Any]:
    target = Path(step["target"])
    target.parent.mkdir(parents=True, exist_ok=True)
    if step.get("symlink"):
        target.symlink_to(step["source"])
    else:
        source = step["source"]
        shutil.copy(source if source.startswith("/") else PAYLOAD / source, target)
        target.chmod(0o755)
    return {"target": str(target)}


def write(step: dict[str, Any]) -> dict[str, Any]:
    Path(step["path"]).write_text(step["text"])
    return {}


def read(step: dict[str, Any]) -> dict[str, Any]:
    path = Path(step["path"])
    return {"text": path.read_text() if path.exists() else None}


def run_step(step: dict[str, Any]) -> dict[str, Any]:
    done = run(step["argv"], env={"PATH": PATH, "LANG": "C.UTF-8"})
    return {"exit": done.returncode, "stdout": done.stdout[-3000:], "stderr": done.stderr[-3000:]}


STEPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "facts": facts, "status": status, "build": build, "register": register,
    "unregister": unregister, "mark": mark, "await": await_, "install": install,
    "write": write, "read": read, "run": run_step,
}


def main() -> None:
    plan = json.loads((PAYLOAD / "plan.json").read_text())
    say(f"{len(plan)} steps")
    for step in plan:
        start = time.monotonic()
        try:
            result = STEPS[step["do"]](step)
        except Exception:  # recorded for the host to show; the plan goes on
            result = {"error": traceback.format_exc()[-3000:]}
        result["took"] = round(time.monotonic() - start, 2)
        results[step["id"]] = result
        save()
        say(f"{step['id']} ({step['do']}): {result['took']} s"
            + (" ERROR" if "error" in result else ""))
    say("done")


if __name__ == "__main__":
    main()
