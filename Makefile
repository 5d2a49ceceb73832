# The two commands README.md starts with: `make run` and `make test`.
# Each installs what it needs itself (Debian packages via apt-get, a venv, pip packages).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# What the test tiers need from Debian: real Nix, real emulators (static and the dynamically
# linked qemu-user), and a booted systemd.
TEST_DEBS := nix-bin qemu-user-static qemu-user systemd-container debootstrap
# strace: the nix.conf writer's system calls are asserted in order.
TEST_DEBS += strace
# tests/farm: a network namespace (ip), keys and Ansible's connection (ssh-keygen, ssh).
TEST_DEBS += iproute2 openssh-client
# tests/packaging: rpmlint (from PyPI) needs rpm's Python bindings, and enchant with an
# en_US dictionary for Fedora's spelling checks.
TEST_DEBS += python3-rpm libenchant-2-2 hunspell-en-us
# completion tests run the real shells
TEST_DEBS += fish zsh
# tests/aarch64: an emulated arm64 machine (qemu-system-aarch64), its tree made by mmdebstrap
# (apt and unpacking on this host, maintainer scripts under qemu-user-static), its disks made
# and read back with mkfs.ext4 -d and debugfs.
TEST_DEBS += qemu-system-arm mmdebstrap e2fsprogs
RUN_DEBS  := python3-venv

.PHONY: run test lint unit integration deps venv bench clean deb rpm mutants

run: venv
	@$(BIN)/binfmtd status; rc=$$?; [ $$rc -le 1 ] || exit $$rc

test: deps venv lint
	$(BIN)/python -m pytest -ra tests

lint: venv
	$(BIN)/ruff check binfmtd tests bench tools
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest -ra tests/unit

# Each deliberate bug in tools/mutants.py, applied in a scratch copy: which test catches it.
# MUTANTS="writer" picks some; MUTANTS="--ref HEAD" tests the last commit, not the tree.
mutants: deps venv
	$(BIN)/python tools/mutants.py $(MUTANTS)

bench: deps venv
	$(BIN)/python bench/run.py

# apt-get only when a package is missing, so a second run stays offline and fast.
deps:
	@missing=$$(for p in $(TEST_DEBS) $(RUN_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(RUN_DEBS); }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat: a plain path entry, as an installed package has; the default editable mode's
	# import hook would cost every interpreter start in the venv about 40 ms.
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

# Packages, each script installing its own build dependencies with apt-get.
deb:
	packaging/debian/build.sh

rpm:
	packaging/fedora/build.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
