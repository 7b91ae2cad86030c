"""Reports longer than a text tower's window: truncation, section selection, chunked encoding.

Text towers stop at 77 (CLIP) or 256/512 (BERT) tokens; radiology reports run longer, and plain
truncation keeps the head of the report (indication, technique) while dropping the impression,
the part that states the diagnosis. `ModelConfig.options["long_text"]` picks one of:

- "truncate": the first words that fit the window (what the tokenizer would do anyway, but cut
  at a word boundary);
- "sections": IMPRESSION first, then FINDINGS, then the rest, then truncate;
- "chunks": the whole report split into windows that each fit; each window is encoded on its
  own and the window globals are pooled per report (`pool_chunks`, `text_global`).

`LongTextTokenizer` wraps a backbone tokenizer (picklable, so DataLoader workers get it) and adds
`chunk_input_ids` / `chunk_attention_mask` / `chunk_owner` in "chunks" mode; `input_ids` always
holds the first window, so a method that ignores chunks still sees a sensible text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from trainer.errors import MedHashError

Tokenizer = Callable[[Sequence[str]], dict[str, Tensor]]
LONG_TEXT_MODES = ("truncate", "sections", "chunks")

# Header names -> section kind. Impression-like and findings-like headers are ranked first.
_IMPRESSION = ("impression", "impressions", "conclusion", "conclusions", "summary", "opinion", "diagnosis")
_FINDINGS = ("findings", "finding", "description", "report")
_OTHER = ("indication", "indications", "history", "clinical history", "clinical information", "reason for exam",
          "reason for examination", "reason for study", "comparison", "comparisons", "technique", "examination",
          "exam", "procedure", "recommendation", "recommendations", "notification", "addendum", "final report",
          "wet read", "clinical indication", "clinical details", "type of examination")
_KIND = {**{h: "impression" for h in _IMPRESSION}, **{h: "findings" for h in _FINDINGS},
         **{h: h for h in _OTHER}}
_HEADER_RE = re.compile(
    r"(?:^|(?<=[\n.;]))[ \t]*(" + "|".join(sorted((re.escape(h).replace(r"\ ", r"\s+") for h in _KIND),
                                               key=len, reverse=True)) + r")[ \t]*:",
    re.IGNORECASE,
)
_RANK = {"impression": 0, "findings": 1}


def parse_sections(text: str) -> list[tuple[str, str]]:
    """(kind, body) pairs in report order; text before the first header is kind "preamble".

    Kinds: "impression" (impression, conclusion, summary, ...), "findings" (findings,
    description, ...), or the lower-cased header for anything else ("indication", "history", ...).
    Bodies are stripped; empty sections are dropped.
    """
    sections: list[tuple[str, str]] = []
    matches = list(_HEADER_RE.finditer(text))
    start_kind, start = "preamble", 0
    for m in matches:
        body = text[start:m.start()].strip()
        if body:
            sections.append((start_kind, body))
        start_kind = _KIND[re.sub(r"\s+", " ", m.group(1).lower())]
        start = m.end()
    body = text[start:].strip()
    if body:
        sections.append((start_kind, body))
    return sections


def section_text(text: str, kind: str) -> str:
    """The bodies of all sections of `kind` ("impression", "findings", "indication", ...), joined."""
    return " ".join(body for k, body in parse_sections(text) if k == kind)


def reorder_sections(text: str) -> str:
    """IMPRESSION first, then FINDINGS, then the rest in report order; headers kept as labels."""
    sections = parse_sections(text)
    if not any(k in _RANK for k, _ in sections):
        return text.strip()
    ordered = sorted(enumerate(sections), key=lambda item: (_RANK.get(item[1][0], 2), item[0]))
    parts = [body if k == "preamble" else f"{k.upper()}: {body}" for _, (k, body) in ordered]
    return " ".join(parts)


# ---- token budgets ---------------------------------------------------------------------------------
def _lengths(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    mask = tokenizer(list(texts))["attention_mask"]
    return [int(n) for n in mask.sum(dim=1)]


def special_tokens(tokenizer: Tokenizer) -> int:
    """Tokens the tokenizer adds around any text ([CLS]/[SEP], <sot>/<eot>)."""
    return _lengths(tokenizer, [""])[0]


def word_windows(text: str, tokenizer: Tokenizer, max_len: int) -> list[str]:
    """Split `text` at whitespace into consecutive windows of at most `max_len` tokens each.

    Word-piece, BPE and the tiny word-hash tokenizers all split on whitespace first, so a window's
    token count is the sum of its words' counts; a single word longer than a window gets a window
    of its own (the tokenizer truncates it).
    """
    words = text.split()
    if not words:
        return [""]
    n_special = special_tokens(tokenizer)
    budget = max(1, max_len - n_special)
    counts = [max(0, n - n_special) for n in _lengths(tokenizer, words)]
    windows: list[str] = []
    current: list[str] = []
    used = 0
    for word, n in zip(words, counts, strict=True):
        if current and used + n > budget:
            windows.append(" ".join(current))
            current, used = [], 0
        current.append(word)
        used += n
    windows.append(" ".join(current))
    return windows


def prepare_text(text: str, mode: str, tokenizer: Tokenizer, max_len: int) -> list[str]:
    """The text(s) to encode for one report: one string ("truncate", "sections") or the windows ("chunks")."""
    if mode not in LONG_TEXT_MODES:
        raise MedHashError("model config", f"long_text must be one of {', '.join(LONG_TEXT_MODES)}, not {mode!r}")
    if mode == "chunks":
        return word_windows(text, tokenizer, max_len)
    if mode == "sections":
        text = reorder_sections(text)
    return word_windows(text, tokenizer, max_len)[:1]


class LongTextTokenizer:
    """Backbone tokenizer + long-report handling; drop-in for `backbone.tokenizer`."""

    def __init__(self, base: Tokenizer, mode: str, max_len: int) -> None:
        if mode not in LONG_TEXT_MODES:
            raise MedHashError("model config", f"long_text must be one of {', '.join(LONG_TEXT_MODES)}, not {mode!r}")
        self.base, self.mode, self.max_len = base, mode, int(max_len)

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        prepared = [prepare_text(t, self.mode, self.base, self.max_len) for t in texts]
        out = dict(self.base([p[0] for p in prepared]))
        if self.mode == "chunks":
            windows = [w for p in prepared for w in p]
            chunk = self.base(windows)
            out["chunk_input_ids"] = chunk["input_ids"]
            out["chunk_attention_mask"] = chunk["attention_mask"]
            out["chunk_owner"] = torch.tensor([i for i, p in enumerate(prepared) for _ in p], dtype=torch.long)
        return out


def unwrap_tokenizer(tokenizer: Any) -> Any:
    """The innermost backbone tokenizer under any wrappers (each wrapper keeps it as `.base`)."""
    while hasattr(tokenizer, "base"):
        tokenizer = tokenizer.base
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer, mode: str | None, max_len: int) -> Tokenizer:
    """`tokenizer` with long-report handling for `mode` (None leaves the tower's own truncation)."""
    base = unwrap_tokenizer(tokenizer)
    return base if mode is None else LongTextTokenizer(base, mode, max_len)


# ---- pooling ---------------------------------------------------------------------------------------
def pool_chunks(globals_: Tensor, owner: Tensor, n_texts: int, scores: Tensor | None = None) -> Tensor:
    """Window globals (W, D) -> one global per report (n_texts, D): mean, or softmax(scores) weights.

    Only the windows of the same report are pooled together (`owner[w]` = its report), so a
    report's global never depends on the other reports of the batch.
    """
    if scores is None:
        weights = torch.ones(owner.shape[0], dtype=globals_.dtype, device=globals_.device)
    else:
        s = scores.reshape(-1).float()
        peak = torch.full((n_texts,), float("-inf"), device=s.device).scatter_reduce(0, owner, s, "amax")
        weights = (s - peak[owner]).exp().to(globals_.dtype)
    total = torch.zeros(n_texts, dtype=globals_.dtype, device=globals_.device).index_add(0, owner, weights)
    pooled = torch.zeros(n_texts, globals_.shape[1], dtype=globals_.dtype, device=globals_.device)
    pooled = pooled.index_add(0, owner, globals_ * weights[:, None])
    return pooled / total.clamp_min(1e-12)[:, None]


def gather_chunk_tokens(tokens: Tensor, mask: Tensor, owner: Tensor, n_texts: int) -> tuple[Tensor, Tensor]:
    """Window tokens (W, L, D) + keep-masks (W, L) -> per-report sequences (n_texts, K*L, D) + masks.

    A report's windows are laid end to end (K = most windows of any report, the rest padding).
    """
    w, length, d = tokens.shape
    slot = torch.zeros_like(owner)
    for i in range(n_texts):  # position of each window within its report
        idx = (owner == i).nonzero(as_tuple=True)[0]
        slot[idx] = torch.arange(idx.numel(), device=owner.device)
    k = int(slot.max()) + 1 if w else 1
    out = tokens.new_zeros(n_texts, k, length, d)
    out_mask = mask.new_zeros(n_texts, k, length)
    out[owner, slot] = tokens
    out_mask[owner, slot] = mask
    return out.reshape(n_texts, k * length, d), out_mask.reshape(n_texts, k * length)


def chunk_tokens(tokens: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The windows of a chunked batch as a plain token dict, or None when the batch is not chunked."""
    if "chunk_input_ids" not in tokens:
        return None
    return {"input_ids": tokens["chunk_input_ids"], "attention_mask": tokens["chunk_attention_mask"]}


def text_global(backbone: Any, tokens: dict[str, Tensor], scores_fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """`backbone.text_global`, pooled over windows when the batch is chunked (any method can call it)."""
    windows = chunk_tokens(tokens)
    if windows is None:
        return backbone.text_global(tokens)
    g = backbone.text_global(windows)
    scores = scores_fn(g) if scores_fn is not None else None
    return pool_chunks(g, tokens["chunk_owner"], tokens["input_ids"].shape[0], scores)
