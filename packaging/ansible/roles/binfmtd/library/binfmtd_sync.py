#!/usr/bin/python
"""binfmtd_sync: keep nix.conf's binfmtd block in step with binfmt_misc, through
`binfmtd sync`, as a module, so that --check says whether it would change and --diff shows
the nix.conf change itself."""

from __future__ import annotations

import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: binfmtd_sync
short_description: Bring nix.conf's binfmtd block in line with binfmt_misc
description:
  - Runs C(binfmtd sync --check --diff); when that would change something and the play is
    not in check mode, runs C(binfmtd sync --json), which writes nix.conf (validated by Nix),
    registers what emulated-systems lacks and restarts nix-daemon.
  - In check mode the config is read from I(config_content) when given, the config.toml the
    play would write, so the answer holds for it even before it is written.
options:
  command: {description: The binfmtd program., type: path, default: /usr/bin/binfmtd}
  config: {description: binfmtd's config.toml., type: path, default: /etc/binfmtd/config.toml}
  config_content: {description: The text of config.toml as the play writes it., type: str}
  binfmt_misc: {description: binfmt_misc's folder., type: path,
                default: /proc/sys/fs/binfmt_misc}
  nix_conf: {description: The nix.conf Nix reads., type: path, default: /etc/nix/nix.conf}
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "command": {"type": "path", "default": "/usr/bin/binfmtd"},
            "config": {"type": "path", "default": "/etc/binfmtd/config.toml"},
            "config_content": {"type": "str"},
            "binfmt_misc": {"type": "path", "default": "/proc/sys/fs/binfmt_misc"},
            "nix_conf": {"type": "path", "default": "/etc/nix/nix.conf"},
        },
        supports_check_mode=True,
    )
    params = module.params
    paths = [params["command"], "--binfmt-misc", params["binfmt_misc"],
             "--nix-conf", params["nix_conf"]]
    piped = module.check_mode and params["config_content"] is not None
    config = "/dev/stdin" if piped else params["config"]
    rc, diff, err = module.run_command([*paths, "--config", config, "sync", "--check", "--diff"],
                                       data=params["config_content"] if piped else None)
    if rc not in (0, 1):  # 2: binfmtd's one line says what is wrong
        module.fail_json(msg=err.strip() or diff.strip(), rc=rc)
    result = {"changed": rc == 1, "diff": {"prepared": diff} if diff else {}}
    if rc == 0 or module.check_mode:
        module.exit_json(**result)
    rc, out, err = module.run_command([*paths, "--config", config, "sync", "--json"])
    if rc != 0:
        module.fail_json(msg=err.strip() or out.strip(), rc=rc)
    report = json.loads(out)
    result.update(platforms=report["platforms"], restart=report.get("restart"))
    module.exit_json(**result)  # changed: sync had something to do (a write, a registration)


if __name__ == "__main__":
    main()
