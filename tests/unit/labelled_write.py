"""The child of test_conffile.py's test of mode, owner and SELinux label: in a mount
namespace of its own (unshare), a fresh tmpfs, nix.conf with all three, one write.

    python -m tests.unit.labelled_write FOLDER    # prints the attributes before and after
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from binfmtd.files import SELINUX_XATTR, replace_file

LABEL = b"system_u:object_r:etc_t:s0\0"  # as SELinux stores it: NUL-terminated


def write_on_a_tmpfs(folder: str) -> str:
    """In the child: a fresh tmpfs, nix.conf with mode, owner and label, one write.

    Returns the file's attributes before and after as JSON.
    """
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "binfmtd-test", folder],
                   check=True, timeout=30)
    conf = Path(folder) / "nix.conf"
    conf.write_text("a = 1\n")
    conf.chmod(0o640)
    os.chown(conf, 1234, 5678)
    os.setxattr(conf, SELINUX_XATTR, LABEL)
    before = _attributes(conf)
    replace_file(conf, "a = 2\n")
    return json.dumps([before, _attributes(conf)])


def _attributes(path: Path) -> dict[str, object]:
    status = path.stat()
    try:
        label: str | None = os.getxattr(path, SELINUX_XATTR).decode()
    except OSError:
        label = None
    return {"mode": status.st_mode & 0o7777, "uid": status.st_uid, "gid": status.st_gid,
            "label": label, "text": path.read_text()}


if __name__ == "__main__":
    print(write_on_a_tmpfs(sys.argv[1]))
