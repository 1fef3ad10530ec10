#!/bin/sh
# Builds a Debian package of collabd from a release build of this
# checkout, with dist/install.sh and dpkg-deb (no other tool):
#
#   cargo build --release
#   dist/build-deb.sh [OUTDIR]          # default OUTDIR: target/debian
#
# Prints the path of the .deb. Install it with `dpkg -i`, then see
# README.md, "Installing".
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
outdir=${1:-$top/target/debian}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 65; }

stage=$(mktemp -d "${TMPDIR:-/tmp}/collabd-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
chmod 0755 "$stage"

"$here/install.sh" --destdir "$stage" --prefix /usr >/dev/null
# dpkg owns /etc/collabd/collabd.conf as a conffile: the example becomes the
# packaged default, and dpkg keeps an operator's edits on upgrade.
install -d -m 0755 "$stage/DEBIAN"
{
  find "$stage/etc" -type f | sed "s|^$stage||" | sort
} >"$stage/DEBIAN/conffiles"

installed_kib=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: collabd
Version: $version
Architecture: $arch
Maintainer: collabd developers <collabd@localhost>
Installed-Size: $installed_kib
Depends: libc6, libssl3 | libssl3t64
Recommends: postgresql-client
Suggests: postgresql
Section: net
Priority: optional
Description: collaboration gateway for mobile devices in front of OCS 2007
 collabd lets mobile collaboration clients use Microsoft Office
 Communications Server 2007 through Communicator Web Access: presence,
 contacts and instant messages, relayed by a synchronous service with a
 bounded session table and a PostgreSQL Config DB.
 .
 This package holds collabd, collab-dispatcher, collabctl, collab-device,
 cwa-sim, their man pages, the systemd units, an example configuration
 and the Config DB migrations.
EOF

# Units are enabled by the operator once the Config DB is set up
# (README.md, "Installing"); the package only tells systemd they exist.
cat >"$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
EOF
cat >"$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"

mkdir -p "$outdir"
deb="$outdir/collabd_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
