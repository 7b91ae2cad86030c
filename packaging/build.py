"""Build the frozen MedHash bundle (PyInstaller onedir) with one command, then write its manifest.

    pip install -e '.[package]'
    python packaging/build.py                      # full bundle: CUDA libraries included (several GB)
    python packaging/build.py --flavor cpu         # leaves out the CUDA libraries only dlopen()ed on GPU
    python packaging/build.py --no-gpl             # without pylibjpeg-libjpeg (GPLv3; docs/codecs.md)
    python packaging/build.py --dist /opt/build --tarball
    python packaging/build.py --pack dist/medhash  # tarball of a bundle built before

The bundle lands in DIST/medhash/ (run DIST/medhash/medhash); MANIFEST.json/.txt and licenses/ are
written into it. See docs/packaging.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bundle_rules


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", choices=("full", "cpu"), default="full",
                        help="full: every library torch ships; cpu: without the CUDA libraries only a GPU run loads")
    parser.add_argument("--no-gpl", action="store_true",
                        help="leave out pylibjpeg-libjpeg (GPLv3): no JPEG-LS, JPEG Lossless or 12-bit JPEG")
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    parser.add_argument("--work", type=Path, default=None, help="PyInstaller work folder (default: build/pyinstaller)")
    parser.add_argument("--tarball", action="store_true", help="also pack DIST/medhash-<version>-linux-<flavor>.tar.gz")
    parser.add_argument("--pack", type=Path, metavar="BUNDLE", help="only pack this built bundle folder (no build)")
    return parser.parse_args(argv)


def run_pyinstaller(args: argparse.Namespace) -> Path:
    work = args.work or REPO / "build" / "pyinstaller"
    command = [sys.executable, "-m", "PyInstaller", str(HERE / "medhash.spec"), "--noconfirm", "--clean",
               "--log-level", "WARN", "--distpath", str(args.dist), "--workpath", str(work),
               "--", "--flavor", args.flavor, *(["--no-gpl"] if args.no_gpl else [])]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return work


def write_bundle_manifest(bundle: Path, work: Path, flavor: str, gpl: bool, seconds: float) -> dict:
    found = json.loads((work / "medhash" / "bundled_names.json").read_text())  # the spec's workpath: WORK/medhash
    dists = bundle_rules.bundled_distributions(set(found["names"]))
    system = system_libraries(found["system_libraries"], bundle)
    data = bundle_rules.manifest(dists, flavor, gpl, {"build_seconds": round(seconds),
                                                       "size_bytes": folder_size(bundle),
                                                       "system_libraries": system})
    bundle_rules.write_manifest(bundle, data)
    bundle_rules.copy_licences(bundle, dists)
    return data


def system_libraries(paths: list[str], bundle: Path) -> list[dict]:
    """The OS libraries PyInstaller copied in, with the Debian package each came from; that package's
    copyright file (its licence) goes to licenses/system/<package>/."""
    real = {path: os.path.realpath(path) for path in paths}
    owners = bundle_rules.debian_packages(sorted({*paths, *real.values()}))
    rows = []
    for path in paths:
        package = owners.get(path) or owners.get(real[path])
        rows.append({"file": Path(path).name, "from": path, "debian_package": package})
        copyright_file = Path("/usr/share/doc") / (package or "-") / "copyright"
        if package and copyright_file.is_file():
            target = bundle / "licenses" / "system" / package / "copyright"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(copyright_file, target)
    return rows


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def pack(bundle: Path, version: str, flavor: str) -> Path:
    """A tarball with the onedir folder at its top (extract, then run medhash/medhash or install.sh)."""
    target = bundle.parent / f"medhash-{version}-linux-x86_64-{flavor}.tar.gz"
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:  # torch's libraries barely compress
        tar.add(bundle, arcname="medhash")
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pack is not None:
        data = json.loads((args.pack / "MANIFEST.json").read_text())
        print(f"packed {pack(args.pack, data['version'], data['flavor'])}")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    work = run_pyinstaller(args)
    bundle = args.dist / "medhash"
    shutil.copytree(HERE / "linux", bundle / "share", dirs_exist_ok=True)  # install.sh, desktop entry, icons
    data = write_bundle_manifest(bundle, work, args.flavor, not args.no_gpl, time.monotonic() - start)
    print(f"built {bundle} ({data['size_bytes'] / 1e9:.2f} GB, {len(data['packages'])} packages, "
          f"flavor {args.flavor}, GPL codec {'in' if data['gpl_codec'] else 'out'}) in {time.monotonic() - start:.0f} s")
    if args.tarball:
        print(f"packed {pack(bundle, data['version'], args.flavor)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
