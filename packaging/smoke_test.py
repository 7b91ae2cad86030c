"""Smoke test of the frozen bundle: build it into a fresh folder, then run the built artefact (not the
source tree) offline, from another working directory, with an empty HOME, and check what it does.

    python packaging/smoke_test.py [--flavor cpu|full] [--no-gpl] [--bundle DIR/medhash]
                                   [--output benchmarks/results/frozen_app.md]

Slow (a PyInstaller build of torch takes 10+ minutes on 2 cores): a separate command, not part of
CI or the pytest suite. Steps: build (unless --bundle names one) -> `--version` -> ingest real DICOMs
and ODIR-5K fundus photographs from ../shared/data -> train a small BASE model -> search with a real
DICOM and a report text, checking the hits -> open the window under Xvfb -> time cold starts of the
bundle and of `medhash` from the venv, alternating, in the same sandbox. Writes a Markdown report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
CHEST = DATA / "dicom" / "xray_chest"
QUERY = CHEST / "CR_chest_MONO1_Philips_RG1_J2K_lossless.dcm"
SIBLINGS = "CR_chest_MONO1_Philips_RG1"  # the same radiograph in other transfer syntaxes
VENV_MEDHASH = REPO / ".venv" / "bin" / "medhash"
WINDOW_TITLE = "MedHash — similar-case search"
sys.path.insert(0, str(HERE))

import bundle_rules


class Sandbox:
    """Runs a command offline (`unshare -n`), in its own working directory, with an empty HOME."""

    def __init__(self, root: Path) -> None:
        self.home, self.cwd = root / "home", root / "cwd"
        self.home.mkdir(parents=True)
        self.cwd.mkdir()
        self.offline = self._probe_unshare()
        self.env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                    "QT_QPA_PLATFORM": "offscreen", "MEDHASH_NO_SERVE": "1"}

    @staticmethod
    def _probe_unshare() -> str | None:
        """None when `unshare -n` works (no network in the child); else why not."""
        if shutil.which("unshare") is None:
            return "unshare not installed"
        probe = subprocess.run(["unshare", "-n", "true"], check=False, capture_output=True, text=True)
        return None if probe.returncode == 0 else f"unshare -n failed: {probe.stderr.strip()[:120]}"

    def command(self, argv: list[str]) -> list[str]:
        return (["unshare", "-n"] if self.offline is None else []) + argv

    def run(self, argv: list[str], timeout: float = 1800, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
        start = time.monotonic()
        done = subprocess.run(self.command(argv), check=False, cwd=self.cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)
        return done, time.monotonic() - start

    def json(self, argv: list[str], **kwargs) -> tuple[dict, float]:
        done, seconds = self.run(argv, **kwargs)
        if done.returncode != 0:
            raise SystemExit(f"FAILED ({done.returncode}): {' '.join(argv)}\n{done.stderr[-3000:]}")
        return json.loads(done.stdout), seconds


class Report:
    """Checks and numbers, printed as they come and written as Markdown at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failures = 0

    def check(self, ok: bool, what: str) -> None:
        self.failures += not ok
        line = f"- [{'x' if ok else ' '}] {'PASS' if ok else 'FAIL'}: {what}"
        print(line, flush=True)
        self.lines.append(line)

    def add(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)


def build(dist: Path, flavor: str, no_gpl: bool, report: Report) -> Path:
    command = [sys.executable, str(HERE / "build.py"), "--dist", str(dist), "--work", str(dist / "work"),
               "--flavor", flavor, *(["--no-gpl"] if no_gpl else [])]
    start = time.monotonic()
    subprocess.run(["nice", "-n", "10", *command], check=True, cwd=REPO)
    report.add(f"Build: `{' '.join(['python', 'packaging/build.py', *command[2:]])}` took "
               f"{time.monotonic() - start:.0f} s (nice 10, shared box).")
    shutil.rmtree(dist / "work", ignore_errors=True)
    return dist / "medhash"


def write_subset_manifest(folder: Path, count: int) -> Path:
    """The first `count` ODIR-5K eyes, image paths made absolute (read through --allow-outside)."""
    source = DATA / "odir5k-256" / "pairs.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()[:count]]
    for row in rows:
        row["image"] = str((source.parent / row["image"]).resolve())
    target = folder / "fundus.jsonl"
    target.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return target


def check_library(box: Sandbox, exe: Path, library: Path, gpl: bool, fundus: int, epochs: int,
                  report: Report) -> None:
    manifest = write_subset_manifest(box.cwd, fundus)
    ingest, seconds = box.json([str(exe), "ingest", str(CHEST), str(DATA / "dicom" / "xray_other"), str(manifest),
                                "--library", str(library), "--allow-outside", str(DATA / "odir5k-256"), "--json"])
    failed = {Path(item["path"]).name: item["reason"] for item in ingest["failed"]}
    report.add(f"\nIngest ({seconds:.1f} s): added {ingest['added']}, failed {len(failed)}: "
               + "; ".join(f"{name}: {reason[:90]}" for name, reason in sorted(failed.items())))
    report.check(ingest["added"] >= fundus, f"ingest added {ingest['added']} cases (>= the {fundus} fundus eyes), "
                 f"skipped {ingest['skipped']} (same pixels as a case already there)")
    report.check(any("CORRUPT" in name for name in failed) and all(failed.values()),
                 "the corrupt DICOMs fail, each with a one-line reason")
    needs_libjpeg = "CR_hip_MONO2_Fuji_RG2_JPLL.dcm"  # JPEG Lossless SV1: libjpeg or gdcm only
    report.check((needs_libjpeg in failed) == (not gpl),
                 f"JPEG Lossless {'fails (no GPL codec, no gdcm)' if not gpl else 'decodes (GPL codec bundled)'}")
    _, seconds = box.json([str(exe), "train", "--library", str(library), "--method", "base", "--bits", "16,32",
                               "--epochs", str(epochs), "--device", "cpu", "--backbone", "embedded",
                               "--progress", "none", "--json"], timeout=3600)
    report.add(f"\nTrain BASE 16/32-bit, {epochs} epochs, embedded backbone, CPU: {seconds:.0f} s")
    models, _ = box.json([str(exe), "models", "--library", str(library), "--json"])
    report.check(bool(models), f"a model is registered ({len(models)} in the library)")


def check_searches(box: Sandbox, exe: Path, library: Path, report: Report) -> None:
    result, seconds = box.json([str(exe), "search", "--library", str(library), "--image", str(QUERY),
                                "--target", "images", "-k", "5", "--no-serve", "--json"])
    hits = result["hits"]
    names = [Path(hit["source_path"]).name for hit in hits]
    report.add(f"\nImage search with `{QUERY.name}` ({seconds:.1f} s): "
               + ", ".join(f"{n} (d={h['distance']}, {h['modality']})" for n, h in zip(names, hits)))
    report.check(len(hits) == 5, f"{len(hits)} hits returned for k=5")
    report.check(sum(SIBLINGS in name for name in names[:3]) >= 2,
                 "the top 3 include >= 2 copies of the same Philips chest radiograph (other transfer syntaxes)")
    report.check(all(hit["modality"] in ("CR", "DX") for hit in hits[:3]), "the top 3 are CR/DX radiographs, not fundus")
    text = "moderate non proliferative retinopathy"
    result, seconds = box.json([str(exe), "search", "--library", str(library), "--text", text,
                                "--target", "images", "-k", "5", "--no-serve", "--json"])
    paths = [hit["source_path"] for hit in result["hits"]]
    report.add(f"\nText search {text!r} ({seconds:.1f} s): " + ", ".join(Path(p).name for p in paths))
    report.check(bool(paths) and all("odir5k" in p for p in paths), "every hit of the fundus report is a fundus photograph")


class Display:
    """Xvfb on a free display number, stopped at the end."""

    def __init__(self) -> None:
        number = next(n for n in range(140, 200) if not Path(f"/tmp/.X{n}-lock").exists())
        self.name = f":{number}"
        self.process = subprocess.Popen(["Xvfb", self.name, "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if time.monotonic() > deadline:
                raise SystemExit("Xvfb did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def window_mapped(display: str) -> bool:
    """The main window (a MedHash top-level of at least 400x300) is mapped and viewable."""
    env = {"DISPLAY": display, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    tree = subprocess.run(["xwininfo", "-root", "-tree"], check=False, env=env, capture_output=True, text=True).stdout
    for window_id, width, height in re.findall(r"^\s*(0x[0-9a-f]+) .*MedHash.*\s(\d+)x(\d+)\+", tree, re.MULTILINE):
        if int(width) >= 400 and int(height) >= 300:
            info = subprocess.run(["xwininfo", "-id", window_id], check=False, env=env, capture_output=True,
                                  text=True).stdout
            if "IsViewable" in info:
                return True
    return False


def painted_colours(display: str) -> int:
    """Distinct colours on the screen (a mapped but unpainted window is one flat colour)."""
    raw = subprocess.run(["xwd", "-root", "-silent"], check=True, env={"DISPLAY": display}, capture_output=True).stdout
    return len(np.unique(xwd_pixels(raw)))


def xwd_pixels(raw: bytes) -> np.ndarray:
    """The pixels of a 24/32-bit ZPixmap XWD dump (X11 `xwd` output), as uint32 values."""
    header = np.frombuffer(raw[:100], dtype=">u4")
    header_size, width, height, bits_per_pixel, bytes_per_line, ncolors = (
        int(header[0]), int(header[4]), int(header[5]), int(header[11]), int(header[12]), int(header[19]))
    if bits_per_pixel != 32:
        raise ValueError(f"expected a 32-bit XWD dump, got {bits_per_pixel} bits per pixel")
    start = header_size + 12 * ncolors
    rows = np.frombuffer(raw[start:start + bytes_per_line * height], dtype=np.uint8).reshape(height, bytes_per_line)
    return rows[:, :width * 4].copy().view(np.uint32) & 0xFFFFFF


def time_window(box: Sandbox, exe: Path, library: Path, display: str, timeout: float = 300) -> tuple[float, float, int]:
    """Seconds from launch until the main window is mapped on Xvfb and until the screen shows it
    painted (more than 50 colours; Xvfb's empty screen has one), and the colours then."""
    env = {**box.env, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    log = box.cwd / "window.log"
    start = time.monotonic()
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the app
        process = subprocess.Popen(box.command([str(exe), "--library", str(library)]), cwd=box.cwd, env=env,
                                   stdout=out, stderr=out)
    try:
        mapped = painted = None
        colours = 0
        while painted is None:
            if process.poll() is not None:
                raise SystemExit(f"the window process exited ({process.returncode}): {log.read_text()[-2000:]}")
            if time.monotonic() - start > timeout:
                raise SystemExit(f"the window did not appear: {log.read_text()[-2000:]}")
            if mapped is None and window_mapped(display):
                mapped = time.monotonic() - start
            if mapped is not None:
                colours = painted_colours(display)
                if colours > 50:
                    painted = time.monotonic() - start
            time.sleep(0.05)
        return mapped, painted, colours
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def time_cold_starts(box: Sandbox, library: Path, exes: dict[str, Path], repeats: int, report: Report) -> None:
    display = Display()
    try:
        mapped: dict[str, list[float]] = {name: [] for name in exes}
        painted: dict[str, list[float]] = {name: [] for name in exes}
        searches: dict[str, list[float]] = {name: [] for name in exes}
        for round_ in range(repeats):
            for name, exe in exes.items():
                mapped_s, painted_s, colours = time_window(box, exe, library, display.name)
                mapped[name].append(mapped_s)
                painted[name].append(painted_s)
                if round_ == 0:
                    report.check(colours > 50, f"{name}: the window opens and is painted ({colours} colours on screen)")
                done, search_s = box.run([str(exe), "search", "--library", str(library), "--image", str(QUERY),
                                          "--target", "images", "-k", "5", "--no-serve", "--json"])
                if done.returncode != 0:
                    raise SystemExit(f"{name} search failed: {done.stderr[-2000:]}")
                searches[name].append(search_s)
    finally:
        display.stop()
    report.add("\n| | frozen bundle | venv `medhash` | ratio frozen/venv |\n|---|---|---|---|")
    for label, numbers in (("launch -> main window mapped on Xvfb (s)", mapped),
                           ("launch -> main window painted (> 50 colours on screen) (s)", painted),
                           ("launch -> first image search answered, process exit (s)", searches)):
        frozen, venv = statistics.median(numbers["frozen"]), statistics.median(numbers["venv"])
        report.add(f"| {label}, median of {repeats} | {frozen:.2f} ({_runs(numbers['frozen'])}) | "
                   f"{venv:.2f} ({_runs(numbers['venv'])}) | {frozen / venv:.2f} |")


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def size_table(bundle: Path) -> str:
    parts = bundle_rules.size_breakdown(bundle)
    total = sum(parts.values())
    lines = ["| part | MB | share |", "|---|---|---|"]
    lines += [f"| {name} | {size / 1e6:,.0f} | {size / total:.0%} |" for name, size in parts.items()]
    return "\n".join(lines + [f"| **total** | **{total / 1e6:,.0f}** | |"])


def machine_line() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, {platform.platform()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", choices=("full", "cpu"), default="cpu")
    parser.add_argument("--no-gpl", action="store_true")
    parser.add_argument("--bundle", type=Path, help="check this built bundle folder instead of building one")
    parser.add_argument("--dist", type=Path, help="fresh folder to build into (default: a new temp folder)")
    parser.add_argument("--fundus", type=int, default=60, help="ODIR-5K eyes to ingest")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="cold starts per app")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "frozen_app.md")
    parser.add_argument("--append", action="store_true", help="add this run below the runs already in --output")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no test data at {DATA}")
    report = Report()
    report.add(f"Machine: {machine_line()}; load average at start {os.getloadavg()[0]:.1f}")
    if args.bundle is None:
        dist = args.dist or Path(tempfile.mkdtemp(prefix="medhash-dist-"))
        if dist.exists() and any(dist.iterdir()):
            sys.exit(f"{dist} is not empty: the smoke test builds into a fresh folder")
        bundle = build(dist, args.flavor, args.no_gpl, report)
    else:
        bundle = args.bundle.resolve()
    exe = bundle / "medhash"
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    gpl = manifest["gpl_codec"]
    report.add(f"\nBundle `{bundle}`: flavor {manifest['flavor']}, GPL codec {'in' if gpl else 'out'}, "
               f"{len(manifest['packages'])} packages in MANIFEST.json\n\n{size_table(bundle)}\n")
    with tempfile.TemporaryDirectory(prefix="medhash-smoke-") as scratch:
        box = Sandbox(Path(scratch))
        report.add(f"Sandbox: cwd {box.cwd}, HOME {box.home} (empty), PATH=/usr/bin:/bin, "
                   + ("no network (`unshare -n`)" if box.offline is None else f"network NOT cut: {box.offline}"))
        version, _ = box.run([str(exe), "--version"])
        report.check(version.returncode == 0 and "frozen" in version.stdout and manifest["flavor"] in version.stdout,
                     f"`medhash --version`: {version.stdout.strip()}")
        shim, _ = box.run([str(exe), "-m", "medhash_app.core.serve", "--help"])
        report.check(shim.returncode == 0 and "--folder" in shim.stdout,
                     "`medhash -m medhash_app.core.serve --help` runs the server module (the `-m` shim)")
        library = box.cwd / "library"
        check_library(box, exe, library, gpl, args.fundus, args.epochs, report)
        check_searches(box, exe, library, report)
        leaked = sorted(str(p.relative_to(box.home)) for p in box.home.rglob("*") if "huggingface" in str(p))
        report.check(not leaked, "no Hugging Face cache was written under HOME")
        report.add(f"\nCold starts, alternating frozen/venv, same sandbox, warm file cache "
                   f"(load average now {os.getloadavg()[0]:.1f}):")
        time_cold_starts(box, library, {"frozen": exe, "venv": VENV_MEDHASH}, args.repeats, report)
    report.add(f"\nLoad average at the end {os.getloadavg()[0]:.1f}. {report.failures} check(s) failed.")
    write_results(args, report)
    return 1 if report.failures else 0


def write_results(args: argparse.Namespace, report: Report) -> None:
    command = "python packaging/smoke_test.py " + " ".join(a for a in sys.argv[1:])
    text = (f"## Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\nCommand: `{command.strip()}`\n\n"
            + "\n".join(report.lines) + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.output.exists():
        text = args.output.read_text(encoding="utf-8") + "\n" + text
    else:
        text = "# Frozen app smoke test (issue 16)\n\n" + text
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
