#!/usr/bin/env bash
# `make rpm`: build the Fedora RPM of binfmtd from an sdist of this tree, with rpmbuild -ba.
# Leaves dist/binfmtd-<version>-<release>.noarch.rpm and dist/binfmtd-<version>-<release>.src.rpm.
#
# On Fedora (the real python-rpm-macros, pyproject-rpm-macros and systemd-rpm-macros are
# installed, e.g. by `dnf builddep packaging/fedora/binfmtd.spec`) this is a plain
# `rpmbuild -ba`. On Debian/Ubuntu it first installs what it needs with apt-get (rpm, and the
# Python tools the macros would call), then loads stand-ins from debian-macros/ for the macro
# packages that are missing, and runs rpmbuild with --nodeps since Debian's rpm database
# knows no packages. The spec itself is never changed. See README.md beside this file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
spec=$here/binfmtd.spec
python=/usr/bin/python3   # the distribution's Python: its setuptools, build, pip, installer
start=$SECONDS

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- build dependencies (Debian/Ubuntu: apt-get, only for what is missing) -----------------
# rpm: rpmbuild. python3-build, -setuptools, -wheel: the sdist. python3-pip, -installer:
# what %pyproject_wheel/%pyproject_install do here. python3-packaging: rpm's python
# dependency generator. python3-structlog, -systemd: binfmtd's runtime dependencies, which
# %pyproject_buildrequires makes BuildRequires on Fedora, for %check's import test;
# python3-pytest, -hypothesis: %check's unit tier.
debs=(rpm python3-build python3-setuptools python3-wheel python3-pip python3-installer
      python3-packaging python3-structlog python3-systemd python3-pytest python3-hypothesis)
if command -v dpkg >/dev/null && command -v apt-get >/dev/null; then
    missing=()
    for deb in "${debs[@]}"; do
        dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb")
    done
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        apt-get -q -o DPkg::Lock::Timeout=600 update
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
            "${missing[@]}"
    fi
fi
command -v rpmbuild >/dev/null || die "rpmbuild is missing (Fedora: dnf install rpm-build)"
"$python" -c 'import build' 2>/dev/null \
    || die "python3 -m build is missing (Fedora: dnf install python3-build)"

# --- version: pyproject.toml is the source; the spec must agree ----------------------------
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$repo/pyproject.toml" | head -n 1)
[ -n "$version" ] || die "no version in $repo/pyproject.toml"
spec_version=$(sed -n 's/^Version: *//p' "$spec" | head -n 1)
[ "$spec_version" = "$version" ] \
    || die "binfmtd.spec has Version: $spec_version but pyproject.toml has $version"

topdir=$(mktemp -d "${TMPDIR:-/tmp}/binfmtd-rpm.XXXXXX")
cleanup() {
    if [ "${1:-1}" -eq 0 ]; then rm -rf "$topdir"; else log "left for a look: $topdir"; fi
}
trap 'cleanup $?' EXIT
mkdir -p "$topdir"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}

# --- the sdist: Source0 ---------------------------------------------------------------------
log "sdist of $repo (binfmtd $version)"
"$python" -m build --sdist --no-isolation --outdir "$topdir/SOURCES" "$repo" >&2
sdist=$topdir/SOURCES/binfmtd-$version.tar.gz
[ -f "$sdist" ] || die "the sdist is not $sdist: $(ls "$topdir/SOURCES")"
# %install takes the unit and the man page from the sdist, as it will on Fedora.
contents=$(tar -tzf "$sdist")
for wanted in systemd/binfmtd.service docs/binfmtd.8 LICENSE README.md; do
    grep -qx "binfmtd-$version/$wanted" <<<"$contents" \
        || die "the sdist lacks $wanted: the repository's MANIFEST.in must include it"
done
cp "$spec" "$topdir/SPECS/"
cp "$here/../config.toml" "$topdir/SOURCES/"  # one default config for both packages

# --- stand-ins for Fedora's macro packages, only where the real ones are missing ------------
args=(--define "_topdir $topdir")
fallbacks=()
[ -n "$(rpm --eval '%{?_docdir_fmt}')" ] || fallbacks+=(redhat)
[ -n "$(rpm --eval '%{?__python3}')" ] || fallbacks+=(python)
[ -n "$(rpm --eval '%{?pyproject_wheel}')" ] || fallbacks+=(pyproject)
[ -n "$(rpm --eval '%{?_unitdir}')" ] || fallbacks+=(systemd)
if ((${#fallbacks[@]})); then
    log "stand-ins for missing Fedora macros: ${fallbacks[*]} (from $here/debian-macros)"
    mkdir -p "$topdir/fallback"
    cp "$here/debian-macros/pyproject_fallback.py" "$topdir/fallback/"
    for name in "${fallbacks[@]}"; do
        args+=(--load "$here/debian-macros/$name.macros")
    done
    # Debian's rpm database is empty: BuildRequires cannot be checked (apt-get did it above).
    args+=(--nodeps)
fi

# --- rpmbuild ------------------------------------------------------------------------------
log "rpmbuild -ba ${args[*]} binfmtd.spec"
rpmbuild -ba "${args[@]}" "$topdir/SPECS/binfmtd.spec" >&2

shopt -s nullglob
rpms=("$topdir"/RPMS/noarch/binfmtd-"$version"-*.noarch.rpm)
srpms=("$topdir"/SRPMS/binfmtd-"$version"-*.src.rpm)
((${#rpms[@]} == 1 && ${#srpms[@]} == 1)) || die "expected one RPM and one SRPM"
mkdir -p "$repo/dist"
rm -f "$repo"/dist/binfmtd-*.noarch.rpm "$repo"/dist/binfmtd-*.src.rpm
cp "${rpms[0]}" "${srpms[0]}" "$repo/dist/"
log "done in $((SECONDS - start)) s:"
for built in "${rpms[0]}" "${srpms[0]}"; do
    echo "dist/$(basename "$built")"
done
