#!/usr/bin/env bash
# Builds a Debian package of coresocks with dpkg-deb, from a built binary:
#
#   cargo build --release && packaging/build-deb.sh               # target/release/coresocks
#   packaging/build-deb.sh --binary PATH --out DIR
#
# The package holds /usr/bin/coresocks, the systemd unit, the man page
# (generated from the binary itself), an example /etc/coresocks/coresocks.toml
# (a conffile), and a postinst that creates the `coresocks` system user.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=target/release/coresocks
out=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "build-deb: unknown argument $1 (use --binary PATH, --out DIR)" >&2; exit 2 ;;
  esac
done
[ -x "$binary" ] || { echo "build-deb: no binary at $binary: build it first (cargo build --release)" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
chmod 755 "$stage"
trap 'rm -rf "$stage"' EXIT

install -D -m 755 "$binary" "$stage/usr/bin/coresocks"
strip --strip-debug "$stage/usr/bin/coresocks" 2>/dev/null || true
install -d "$stage/lib/systemd/system"
sed 's|/usr/local/bin/coresocks|/usr/bin/coresocks|g' packaging/coresocks.service \
  >"$stage/lib/systemd/system/coresocks.service"
install -D -m 644 packaging/coresocks.toml "$stage/etc/coresocks/coresocks.toml"
install -d "$stage/usr/share/man/man1"
"$binary" man | gzip -9n >"$stage/usr/share/man/man1/coresocks.1.gz"
install -D -m 644 README.md "$stage/usr/share/doc/coresocks/README.md"
printf 'coresocks is licensed MIT OR Apache-2.0.\n' >"$stage/usr/share/doc/coresocks/copyright"

install -d "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: coresocks
Version: $version
Architecture: $arch
Maintainer: coresocks developers <coresocks@localhost>
Depends: libc6, libgssapi-krb5-2
Section: net
Priority: optional
Installed-Size: $(du -sk "$stage" | cut -f1)
Description: thread-per-core SOCKS5 proxy for Linux
 RFC 1928 CONNECT, BIND and UDP ASSOCIATE, RFC 1929 and GSSAPI (RFC 1961)
 authentication, one io_uring executor per core, splice(2) relaying, an
 egress policy that denies private destinations by default, SIGHUP reload
 and zero-downtime upgrades.
CONTROL
echo /etc/coresocks/coresocks.toml >"$stage/DEBIAN/conffiles"
cat >"$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd coresocks >/dev/null; then
    adduser --system --group --no-create-home --home /nonexistent coresocks >/dev/null
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
  fi
fi
POSTINST
chmod 755 "$stage/DEBIAN/postinst"
mkdir -p "$out"
deb="$out/coresocks_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
