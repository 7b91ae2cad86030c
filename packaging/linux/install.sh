#!/bin/sh
# Install the frozen MedHash bundle this script sits in: the program folder, a `medhash` command,
# the desktop entry, the icon and the .dcm (application/dicom) association. No Python needed.
#
#   ./install.sh                 as root: /opt/medhash + /usr/local; as a user: ~/.local
#   ./install.sh --prefix DIR    program in DIR/lib/medhash, command in DIR/bin, menus in DIR/share
#   ./install.sh --uninstall [--prefix DIR]
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=""
action=install
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --uninstall) action=uninstall; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$prefix" ]; then
    if [ "$(id -u)" = 0 ]; then prefix=/usr/local; appdir=/opt/medhash
    else prefix="$HOME/.local"; appdir="$prefix/lib/medhash"; fi
else
    appdir="$prefix/lib/medhash"
fi
share="$prefix/share"

refresh() {
    if command -v update-mime-database >/dev/null 2>&1; then update-mime-database "$share/mime" || true; fi
    if command -v update-desktop-database >/dev/null 2>&1; then update-desktop-database "$share/applications" || true; fi
    if command -v gtk-update-icon-cache >/dev/null 2>&1 && [ -f "$share/icons/hicolor/index.theme" ]; then
        gtk-update-icon-cache -q -t "$share/icons/hicolor" || true
    fi
}

if [ "$action" = uninstall ]; then
    rm -rf "$appdir"
    rm -f "$prefix/bin/medhash" "$share/applications/medhash.desktop" "$share/mime/packages/medhash-dicom.xml" \
          "$share/icons/hicolor/scalable/apps/medhash.svg"
    for size in 48 128 256; do rm -f "$share/icons/hicolor/${size}x${size}/apps/medhash.png"; done
    refresh
    echo "removed MedHash from $appdir and $prefix"
    exit 0
fi

bundle=$(cd "$here/.." && pwd)
[ -x "$bundle/medhash" ] || { echo "install.sh: no medhash executable in $bundle (run it from the unpacked bundle)" >&2; exit 2; }
mkdir -p "$appdir" "$prefix/bin" "$share/applications" "$share/mime/packages" "$share/icons/hicolor/scalable/apps"
if [ "$bundle" != "$appdir" ]; then
    rm -rf "$appdir"
    cp -a "$bundle" "$appdir"
fi
ln -sf "$appdir/medhash" "$prefix/bin/medhash"
sed "s#^Exec=medhash#Exec=$appdir/medhash#; s#^TryExec=medhash#TryExec=$appdir/medhash#" \
    "$here/medhash.desktop" > "$share/applications/medhash.desktop"
cp "$here/medhash-dicom.xml" "$share/mime/packages/medhash-dicom.xml"
cp "$here/medhash.svg" "$share/icons/hicolor/scalable/apps/medhash.svg"
for size in 48 128 256; do
    mkdir -p "$share/icons/hicolor/${size}x${size}/apps"
    cp "$here/medhash-$size.png" "$share/icons/hicolor/${size}x${size}/apps/medhash.png"
done
refresh
if command -v xdg-mime >/dev/null 2>&1 && [ "$(id -u)" != 0 ]; then
    xdg-mime default medhash.desktop application/dicom || true
fi
echo "installed MedHash in $appdir; command: $prefix/bin/medhash; desktop entry: $share/applications/medhash.desktop"
