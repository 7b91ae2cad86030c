"""Image captions kept in the library: MCPH's caption of each image, imported from a captions file.

A captions file (CSV or JSONL, `id` and/or `image` -> `caption`, made offline e.g. by
scripts/chexagent_captions.py) is read with trainer.data.captions.load_captions, matched to the
library's cases, and each caption is stored in its case's `extra["caption"]`. Encoding
(encoder/library_encoding.py) and training (training.library_samples) hand it to the model with the
image, as a captions file does in training, so stored codes are made the way the model was trained.
A caption describes the image alone, never the report (DESIGN.md).

Matching: each file entry (an id, or an image path with its resolved form) is tried against these
rules in order; the first rule that finds any case decides:

1. case id (the content hash);
2. manifest id (`extra["id"]`, kept by manifest ingest; what `chexagent_captions.py --manifest` writes);
3. DICOM SOP Instance UID (compared as the library's keyed pseudonym, which is all it stores);
4. source file path (absolute);
5. source file name;
6. source file stem (the key's name, or an image key's stem, against the source file's stem).

A rule that finds two or more cases makes the entry ambiguous: it is reported, never guessed.

A caption-reading model's stored image codes (and embeddings) depend on the caption, so the import
deletes them for the changed cases in the same transaction as the captions, and drops those models'
FAISS caches; `medhash encode` then re-encodes exactly those images.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medhash_app.core.errors import DataError, LibraryError
from medhash_app.core.index.cache import BinaryIndexCache
from medhash_app.core.library import Library
from trainer.checkpoint import read_checkpoint_config
from trainer.data.captions import CAPTION_KEY, load_captions
from trainer.errors import CheckpointError

REPORT_LIMIT = 20  # keys listed in a report; the counts hold the full numbers
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"})
# Methods whose image codes never read the caption, and the switch that makes the others read it
# (MCPH's visual prompts: `MCPH.uses_captions`; TriPAH's image metadata prompt includes the caption).
# An unknown method counts as caption-reading: re-encoding is cheap, stale codes are not.
_CAPTION_FREE = frozenset({"base", "prompthash"})
_CAPTION_SWITCH = {"mcph": "vpl", "tripah": "context_prompt"}


@dataclass
class CaptionImport:
    """What an import did; `unmatched` / `ambiguous` list the first REPORT_LIMIT entries."""

    file: str
    entries: int  # ids and image paths in the file
    matched: int  # cases the file gives a caption
    changed: int  # of those, cases whose stored caption changed
    unmatched: list[str] = field(default_factory=list)
    unmatched_count: int = 0
    ambiguous: list[dict[str, Any]] = field(default_factory=list)  # {"key", "rule", "cases"}
    ambiguous_count: int = 0
    invalidated_codes: int = 0  # image code rows deleted (all code lengths of all caption-reading models)
    models: list[int] = field(default_factory=list)  # ids of the models whose image codes were deleted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CaptionChange:
    """Cases whose caption changed, and the image codes that were deleted because of it."""

    changed: list[str]
    invalidated_codes: int
    models: list[int]


# ---- which models read captions -------------------------------------------------------------------------
def _model_config(model: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model's ModelConfig dict: its registry row, else its checkpoint's config.json."""
    config = model.get("config") or {}
    if config.get("method"):
        return config
    try:
        return read_checkpoint_config(model["checkpoint_path"]).get("model_config")
    except CheckpointError:
        return None


def reads_captions(model: Mapping[str, Any]) -> bool:
    """True when the model's image codes depend on the image's caption (conservative when unsure)."""
    method = str(model.get("method") or "").lower()
    if method in _CAPTION_FREE:
        return False
    config = _model_config(model)
    switch = _CAPTION_SWITCH.get(method)
    if config is None or switch is None:
        return True
    return bool((config.get("components") or {}).get(switch, True))


# ---- storing captions -----------------------------------------------------------------------------------
def _clean(text: str | None) -> str | None:
    return text.strip() if isinstance(text, str) and text.strip() else None


def _index_keys(model: Mapping[str, Any]) -> list[str]:
    return [f"m{model['id']}-image-{int(bits)}" for bits in model.get("bits") or []]


def set_captions(library: Library, captions: Mapping[str, str | None]) -> CaptionChange:
    """Store {case id: caption} (None or blank text clears it) in one transaction, deleting the image codes
    of caption-reading models for every case whose caption changed; all or nothing."""
    with library.transaction():
        cases = library.get_cases(list(captions))
        missing = sorted(set(captions) - {c["id"] for c in cases})
        if missing:
            raise LibraryError(f"case {missing[0]}", "no such case in this library")
        extras: dict[str, dict[str, Any]] = {}
        for case in cases:
            new, extra = _clean(captions[case["id"]]), dict(case["extra"] or {})
            if _clean(extra.get(CAPTION_KEY)) == new:
                continue
            if new is None:
                extra.pop(CAPTION_KEY, None)
            else:
                extra[CAPTION_KEY] = new
            extras[case["id"]] = extra
        models = [m for m in library.list_models() if reads_captions(m)] if extras else []
        library.set_extras(extras)
        deleted = sum(library.delete_case_codes(int(m["id"]), "image", list(extras)) for m in models)
    cache = BinaryIndexCache(library.folder)  # a cache could not be served anyway (checksum); drop it
    for key in (k for m in models for k in _index_keys(m)):
        cache.remove(key)
    return CaptionChange(list(extras), deleted, [int(m["id"]) for m in models])


# ---- matching a captions file to cases ------------------------------------------------------------------
def _stems(key: str) -> set[str]:
    name = Path(key).name
    return {name, Path(name).stem} if Path(name).suffix.lower() in IMAGE_SUFFIXES else {name}


def _abs(key: str) -> str | None:
    return os.path.normpath(key) if Path(key).is_absolute() else None


# (rule name, the case's values, the entry key's values)
Rule = tuple[str, Callable[[dict[str, Any]], Iterable[str]], Callable[[str], Iterable[str]]]
_RULES: tuple[Rule, ...] = (
    ("case id", lambda c: [c["id"]], lambda k: [k]),
    ("manifest id", lambda c: [str(c["extra"]["id"])] if (c.get("extra") or {}).get("id") not in (None, "") else [],
     lambda k: [k]),
    ("SOP instance UID", lambda c: [c["sop_instance_uid"]] if c.get("sop_instance_uid") else [], lambda k: [k]),
    ("source path", lambda c: [os.path.normpath(c["source_path"])] if c.get("source_path") else [],
     lambda k: [a] if (a := _abs(k)) else []),
    ("file name", lambda c: [Path(c["source_path"]).name] if c.get("source_path") else [],
     lambda k: [Path(k).name] if Path(k).name else []),
    ("file stem", lambda c: [Path(c["source_path"]).stem] if c.get("source_path") else [], _stems),
)


class _CaseIndex:
    """Case ids by each rule's value, built in one pass over the library. `key_maps` turns a file
    key into the form the library stores (a SOP Instance UID into its pseudonym)."""

    def __init__(self, cases: Iterable[dict[str, Any]],
                 key_maps: Mapping[str, Callable[[str], str | None]] | None = None) -> None:
        self.key_maps = dict(key_maps or {})
        self.by: dict[str, dict[str, set[str]]] = {name: defaultdict(set) for name, _, _ in _RULES}
        for case in cases:
            for name, values, _ in _RULES:
                for value in values(case):
                    self.by[name][value].add(case["id"])

    def match(self, keys: list[str]) -> tuple[str, set[str]] | None:
        """(rule, case ids) of the first rule that finds any case for any of `keys`."""
        for name, _, key_values in _RULES:
            table = self.by[name]
            convert = self.key_maps.get(name, lambda value: value)
            found = {cid for key in keys for value in key_values(key) for cid in table.get(convert(value), ())}
            if found:
                return name, found
        return None


def _entries(captions: Mapping[str, str], root: Path) -> dict[str, list[str]]:
    """{key as written: all its keys}: load_captions adds the resolved form of a relative image path."""
    resolved = {str((root / k).resolve()): k for k in captions if not Path(k).is_absolute()}
    entries: dict[str, list[str]] = {}
    for key in captions:
        entries.setdefault(resolved.get(key, key), []).append(key)
    return entries


def _read(path: Path) -> dict[str, str]:
    """load_captions with every way a file can be unreadable as a DataError naming it."""
    try:
        return load_captions(path)
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise DataError(path, f"not a readable CSV file ({exc})") from exc
    except OSError as exc:
        raise DataError(path, f"cannot be read ({exc.strerror or exc})") from exc


def import_captions(library: Library, path: str | Path) -> CaptionImport:
    """Store the captions of a captions file in the matching cases (see the module doc for the rules).

    Raises DataError (naming the file and line) for an unreadable file, or when two entries give one
    case different captions; the library is then left exactly as it was.
    """
    path = Path(path)
    captions = _read(path)
    index = _CaseIndex(library.iter_cases(), {"SOP instance UID": library.pseudonyms.uid})
    chosen: dict[str, tuple[str, str]] = {}  # case id -> (caption, key)
    unmatched: list[str] = []
    ambiguous: list[dict[str, Any]] = []
    entries = _entries(captions, path.parent)
    for key, keys in entries.items():
        hit = index.match(keys)
        if hit is None:
            unmatched.append(key)
            continue
        rule, found = hit
        if len(found) > 1:
            ambiguous.append({"key": key, "rule": rule, "cases": len(found)})
            continue
        case_id, text = next(iter(found)), captions[key]
        earlier = chosen.setdefault(case_id, (text, key))
        if earlier[0] != text:
            raise DataError(path, f"{earlier[1]!r} and {key!r} give the same case different captions")
    change = set_captions(library, {cid: text for cid, (text, _) in chosen.items()})
    return CaptionImport(file=str(path), entries=len(entries), matched=len(chosen), changed=len(change.changed),
                         unmatched=unmatched[:REPORT_LIMIT], unmatched_count=len(unmatched),
                         ambiguous=ambiguous[:REPORT_LIMIT], ambiguous_count=len(ambiguous),
                         invalidated_codes=change.invalidated_codes, models=change.models)
