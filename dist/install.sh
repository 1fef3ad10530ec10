#!/bin/sh
# Installs collabd's five programs, man pages, systemd units, example
# configuration and SQL migrations from a release build of this checkout.
#
#   cargo build --release
#   dist/install.sh [--destdir DIR] [--prefix /usr] [--target-dir target]
#
# --destdir stages the tree under DIR (for a package, see
# dist/build-deb.sh); without it the files go to their real places and the
# script must run as root. Paths follow the units in dist/: programs in
# PREFIX/bin, units in /usr/lib/systemd/system, configuration in
# /etc/collabd (collabd.conf is installed only when none exists, so an
# upgrade never overwrites an operator's file; the example is always in
# PREFIX/share/doc/collabd/examples).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
destdir=
prefix=/usr
target_dir="$top/target"

while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --target-dir) target_dir=${2:?--target-dir needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
done

programs="collabd collab-dispatcher collabctl collab-device cwa-sim"
for p in $programs; do
  if [ ! -x "$target_dir/release/$p" ]; then
    echo "install.sh: $target_dir/release/$p is missing: run 'cargo build --release' first" >&2
    exit 66
  fi
done

bindir="$destdir$prefix/bin"
mandir="$destdir$prefix/share/man"
docdir="$destdir$prefix/share/doc/collabd"
sqldir="$destdir$prefix/share/collabd/sql"
unitdir="$destdir/usr/lib/systemd/system"
confdir="$destdir/etc/collabd"

install -d -m 0755 "$bindir" "$docdir/examples" "$sqldir" "$unitdir"
for p in $programs; do
  install -m 0755 "$target_dir/release/$p" "$bindir/$p"
done

# Man pages, compressed as Debian policy asks (-n: no time stamp, so
# two builds of one checkout give the same bytes).
for page in "$top"/man/*.[0-9]; do
  name=$(basename "$page")
  section=${name##*.}
  install -d -m 0755 "$mandir/man$section"
  gzip -9n -c "$page" >"$mandir/man$section/$name.gz"
  chmod 0644 "$mandir/man$section/$name.gz"
done

install -m 0644 "$top"/dist/collabd.service "$top"/dist/collab-dispatcher.service "$unitdir/"
install -m 0644 "$top"/dist/collabd.conf.example "$docdir/examples/collabd.conf.example"
install -m 0644 "$top"/README.md "$docdir/README.md"
install -m 0644 "$top"/sql/*.sql "$sqldir/"

# The configuration directory is readable by the service only through
# systemd (ConfigurationDirectoryMode=0750 in the unit).
install -d -m 0750 "$confdir"
if [ ! -e "$confdir/collabd.conf" ]; then
  install -m 0640 "$top"/dist/collabd.conf.example "$confdir/collabd.conf"
fi
install -d -m 0755 "$destdir/etc/collab-dispatcher"
if [ ! -e "$destdir/etc/collab-dispatcher/environment" ]; then
  printf '%s\n' \
    '# collab-dispatcher(8) reads its Config DB URL from here.' \
    '#COLLABD_DATABASE_URL=postgresql://collab_dispatcher@%2Frun%2Fpostgresql/collab' \
    >"$destdir/etc/collab-dispatcher/environment"
  chmod 0640 "$destdir/etc/collab-dispatcher/environment"
fi

echo "installed collabd into ${destdir:-/}"
