#!/usr/bin/env bash
# Build dist/binfmtd_<version>_all.deb from this checkout: the tracked source tree plus
# packaging/debian as debian/, built by dpkg-buildpackage in a temp folder, then lintian
# (errors fail the build, warnings are printed). Run as root on Debian 12 or Ubuntu 22.04+;
# installs its build dependencies with apt-get when they are missing.
set -euo pipefail

# Debian's tools and Python only: a pyenv, a venv or a /usr/local python3 first on PATH
# would otherwise be the interpreter pybuild builds with.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME PYTHONUSERBASE VIRTUAL_ENV PYENV_VERSION

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
cd "$top"

# debian/control's Build-Depends (dpkg-buildpackage checks them again), plus make
# (debian/rules is a makefile), lintian and git. The rest of build-essential (a C compiler)
# is not needed for a Python package: dpkg-buildpackage runs with --ignore-builtin-builddeps.
build_debs=(make dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all
            python3-setuptools python3-pytest python3-hypothesis
            python3-structlog lintian git)
missing=()
for deb in "${build_debs[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$deb" 2>/dev/null | grep -qx installed \
        || missing+=("$deb")
done
if ((${#missing[@]})); then
    if ((EUID != 0)); then
        echo "build.sh: missing build dependencies: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "build.sh: installing build dependencies: ${missing[*]}"
    apt_get=(apt-get -q -o DPkg::Lock::Timeout=300)
    "${apt_get[@]}" update
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y --no-install-recommends \
        "${missing[@]}"
fi

# One version: pyproject.toml's, which debian/changelog must carry too.
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)
if [[ -z "$version" ]]; then
    echo "build.sh: no version = \"...\" line in pyproject.toml" >&2
    exit 1
fi
changelog_version=$(dpkg-parsechangelog -l "$here/changelog" -S Version)
if [[ "$changelog_version" != "$version" ]]; then
    echo "build.sh: pyproject.toml says $version but packaging/debian/changelog says" \
         "$changelog_version: add a changelog entry for $version (dch -v $version)" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/binfmtd-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/binfmtd-$version"
mkdir "$src"

# The source as git sees it: tracked and new files as they are in the working tree
# (deleted ones left out), never ignored build products (.venv, dist, *.egg-info).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' path; do
              if [[ -e "$path" || -L "$path" ]]; then printf '%s\0' "$path"; fi
          done \
        | tar --null -T - -cf - | tar -xf - -C "$src"
else
    echo "build.sh: $top is not a git checkout; build from a clone" >&2
    exit 1
fi
rm -rf "$src/debian"
cp -a "$here" "$src/debian"
cp "$here/../config.toml" "$src/debian/config.toml"  # one default config for both packages
cp "$src/systemd/binfmtd.service" "$src/debian/binfmtd.service"  # for dh_installsystemd
rm -f "$src/debian/build.sh"

echo "build.sh: dpkg-buildpackage in $src"
(cd "$src" && dpkg-buildpackage -b -us -uc --ignore-builtin-builddeps)

deb="$work/binfmtd_${version}_all.deb"
changes=("$work"/binfmtd_"${version}"_*.changes)
echo "build.sh: lintian ${changes[0]##*/} (the .deb and its .buildinfo)"
# An error fails the build; warnings and informational tags are printed.
lintian --fail-on error --display-info "${changes[0]}"

mkdir -p dist
cp "$deb" dist/
echo "build.sh: built dist/$(basename "$deb")"
