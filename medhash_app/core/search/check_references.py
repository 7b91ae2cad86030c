"""The word and image-feature out-of-domain references, kept on disk between sessions.

Why: building them reads the whole library in every process: at 100k cases the word check listed
every case (~6 s) and fitted TF-IDF, and the feature check listed every case and ran the stem over
sampled images; a cold `medhash search` spent most of its ~20 s there, and the window's first search
~9 s even after warm-up. Like the image-statistics reference (reference_files.py) each is saved as
one .npz under `indexes/` for the key it was built for, and rebuilt when anything it depends on
changes or the file is damaged:
  words     a SHA-256 of every case's report and domain in database order, and the builders' source;
  features  which cases have model inputs (`Library.input_fingerprint`), the checkpoint's files
            (name, size, mtime) and the builders' source.

No pickle: a library folder may come from someone else, and unpickling runs code. The fitted
TfidfVectorizers are saved as plain arrays (their parameters as JSON, the vocabulary as UTF-8 bytes
with end offsets in column order, the idf) and rebuilt as TfidfVectorizer objects; a file whose
arrays disagree with each other is rebuilt, never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from medhash_app.core.encoder import stem_features
from medhash_app.core.encoder.service import EncoderService
from medhash_app.core.library import Library
from medhash_app.core.search import domain_checks, feature_ood, lexical
from medhash_app.core.search.domain_checks import library_feature_reference
from medhash_app.core.search.feature_ood import FeatureReference
from medhash_app.core.search.lexical import LexicalReference, build_lexical_reference
from medhash_app.core.search.reference_files import load_or_build, source_digest

log = logging.getLogger(__name__)

_LEXICAL_FIELDS = {"words", "chars", "matrix", "scores", "threshold", "domains"}
_PARAM_TYPES = (str, int, float, bool, type(None))


@dataclass
class LexicalArrays:
    """A LexicalReference as plain arrays (see the module docstring)."""

    words_params: str
    words_terms: np.ndarray  # uint8: the vocabulary's UTF-8 terms one after another, in column order
    words_ends: np.ndarray  # int64: where each term ends in words_terms
    words_idf: np.ndarray
    chars_params: str
    chars_terms: np.ndarray
    chars_ends: np.ndarray
    chars_idf: np.ndarray
    data: np.ndarray  # the units matrix (CSR)
    indices: np.ndarray
    indptr: np.ndarray
    shape: np.ndarray
    scores: np.ndarray
    threshold: float
    domains: np.ndarray  # str; empty when has_domains is False
    has_domains: bool


# -- words ------------------------------------------------------------------------------------------
def saved_lexical_reference(library: Library, *, retry: bool = True) -> LexicalReference | None:
    """The word check's reference for the library's reports: from its file when built for these
    reports by this code, else built (and saved when the library is writable)."""
    rows = library.reports()
    key = f"reports:{len(rows)}:{_reports_digest(rows)}|{_code_digest(lexical)}"
    built: list[LexicalReference] = []

    def build() -> LexicalArrays | None:
        ref = build_lexical_reference([r or "" for r, _ in rows], [d for _, d in rows])
        if ref is None:
            return None
        built.append(ref)
        return lexical_to_arrays(ref)

    arrays = load_or_build(library.indexes_dir, "lexical", key, LexicalArrays, build, save=not library.read_only)
    if built:
        return built[0]
    if arrays is None:
        return None
    try:
        return lexical_from_arrays(arrays)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:  # consistent digest, inconsistent content
        log.warning("word-check reference of %s not usable, rebuilt: %s", library.folder, exc)
        if not library.read_only:
            (library.indexes_dir / "lexical.ref.npz").unlink(missing_ok=True)
        if retry and not library.read_only:
            return saved_lexical_reference(library, retry=False)
        return build_lexical_reference([r or "" for r, _ in rows], [d for _, d in rows])


def _reports_digest(rows: list[tuple[str | None, str | None]]) -> str:
    h = hashlib.sha256()
    h.update("\x1e".join(f"{r or ''}\x1f{d or ''}" for r, d in rows).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _code_digest(*modules: Any) -> str:
    """The builders' source and this module's (which turns them into arrays and back)."""
    return ":".join(source_digest(m) for m in (*modules, sys.modules[__name__]))


def lexical_to_arrays(ref: LexicalReference) -> LexicalArrays | None:
    """None when the reference holds something arrays cannot say (then it is not saved)."""
    if {f.name for f in dataclasses.fields(ref)} != _LEXICAL_FIELDS:
        log.warning("word-check reference has fields %s: not saved", [f.name for f in dataclasses.fields(ref)])
        return None
    words, chars = _vectorizer_arrays(ref.words), _vectorizer_arrays(ref.chars)
    if words is None or chars is None:
        return None
    m = sparse.csr_matrix(ref.matrix)
    return LexicalArrays(*words, *chars, m.data, m.indices, m.indptr, np.array(m.shape, dtype=np.int64),
                         np.asarray(ref.scores), float(ref.threshold),
                         np.asarray(ref.domains if ref.domains is not None else [], dtype=str),
                         ref.domains is not None)


def _vectorizer_arrays(vec: TfidfVectorizer) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
    params = vec.get_params()
    params["dtype"] = np.dtype(params["dtype"]).name
    if any(not isinstance(v, (*_PARAM_TYPES, tuple)) for v in params.values()):
        log.warning("word-check vectorizer has non-plain parameters: not saved")
        return None
    terms = sorted(vec.vocabulary_, key=vec.vocabulary_.__getitem__)
    encoded = [t.encode("utf-8") for t in terms]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return json.dumps(params), blob, ends, np.asarray(vec.idf_)


def lexical_from_arrays(a: LexicalArrays) -> LexicalReference:
    """The reference again; ValueError when the arrays do not fit together."""
    words = _vectorizer(a.words_params, a.words_terms, a.words_ends, a.words_idf)
    chars = _vectorizer(a.chars_params, a.chars_terms, a.chars_ends, a.chars_idf)
    shape = tuple(int(v) for v in a.shape)
    if shape[1:] != (len(a.words_idf) + len(a.chars_idf),) or len(a.indptr) != shape[0] + 1:
        raise ValueError("matrix shape does not match the vocabularies")
    matrix = sparse.csr_matrix((a.data, a.indices, a.indptr), shape=shape)
    matrix.check_format(full_check=True)
    domains = a.domains if a.has_domains else None
    if domains is not None and len(domains) != shape[0]:
        raise ValueError("domains do not match the units")
    return LexicalReference(words, chars, matrix, a.scores, float(a.threshold), domains)


def _vectorizer(params_json: str, blob: np.ndarray, ends: np.ndarray, idf: np.ndarray) -> TfidfVectorizer:
    params = json.loads(params_json)
    if not isinstance(params, dict) or not set(params) <= set(TfidfVectorizer().get_params()):
        raise ValueError("unknown vectorizer parameters")
    if not all(isinstance(v, (*_PARAM_TYPES, list)) for v in params.values()):
        raise ValueError("vectorizer parameters are not plain values")
    params["dtype"] = np.dtype(params["dtype"]).type
    if isinstance(params.get("ngram_range"), list):
        params["ngram_range"] = tuple(params["ngram_range"])
    if ends.ndim != 1 or len(ends) != len(idf) or (len(ends) and (ends[-1] != len(blob) or np.any(np.diff(ends) < 0))):
        raise ValueError("vocabulary offsets do not match")
    raw = blob.tobytes()
    starts = np.concatenate([[0], ends[:-1]])
    vocabulary = {raw[s:e].decode("utf-8"): i for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist()))}
    if len(vocabulary) != len(idf):
        raise ValueError("repeated vocabulary terms")
    vec = TfidfVectorizer(**params)
    vec.vocabulary_ = vocabulary
    vec.idf_ = idf
    return vec


# -- image features ----------------------------------------------------------------------------------
def saved_feature_reference(library: Library, model_id: int, encoder: EncoderService) -> FeatureReference | None:
    """The image-feature check's reference for this model: from its file when built for the same cases'
    images, checkpoint and code, else built from the stem features (domain_checks.py) and saved."""
    key = (f"{library.input_fingerprint()}|{checkpoint_stamp(encoder.checkpoint_dir)}|"
           f"{_code_digest(feature_ood, domain_checks, stem_features)}")
    return load_or_build(library.indexes_dir, f"image-features-m{int(model_id)}", key, FeatureReference,
                         lambda: library_feature_reference(library, model_id, encoder), save=not library.read_only)


def checkpoint_stamp(folder: Path) -> str:
    """The checkpoint's files by name, size and modification time: weights written again, even in place,
    give another stamp (hashing ~100 MB of weights would cost more than the reference saves). Not the
    folder's path, so a library copied or moved with its models keeps its reference."""
    try:
        files = sorted(p for p in Path(folder).iterdir() if p.is_file())
        parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    except OSError:
        parts = [f"unreadable:{Path(folder).resolve()}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
