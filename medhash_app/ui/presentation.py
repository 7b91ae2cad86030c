"""Text shown for a hit: labels, a report excerpt with the shared findings highlighted, dates.

Pure functions (no Qt) so they are easy to test; the delegates only paint what these return.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

EXCERPT_CHARS = 260
_STOP = {"other", "finding", "findings", "no", "support", "devices", "device", "disease", "the"}


def case_labels(case: dict[str, Any]) -> list[str]:
    """Labels of a case row, whether stored as a list, a JSON list or a comma-separated string."""
    value = case.get("labels")
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            return [str(v) for v in json.loads(text)]
        except ValueError:
            pass
    return [part.strip() for part in text.split(",") if part.strip()]


def finding_patterns(findings: list[str]) -> list[re.Pattern[str]]:
    """Regexes that find a finding in free text: the whole phrase, else its telling words."""
    patterns: list[re.Pattern[str]] = []
    for finding in findings:
        phrase = finding.strip()
        if not phrase:
            continue
        words = [w for w in re.findall(r"[A-Za-z]{4,}", phrase) if w.lower() not in _STOP]
        alternatives = [re.escape(phrase)] + [re.escape(w.removesuffix("s")) for w in words]
        patterns.append(re.compile(r"\b(" + "|".join(alternatives) + r")\w*", re.IGNORECASE))
    return patterns


def highlight_spans(text: str, findings: list[str]) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) spans of `text` that mention one of the findings."""
    spans: list[tuple[int, int]] = []
    for pattern in finding_patterns(findings):
        spans.extend(m.span() for m in pattern.finditer(text))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


# Full-width ASCII forms (U+FF01-FF5E) and the ideographic space: ODIR-5K writes "，" between
# diagnoses, which the UI fonts draw as an empty box. Only these are mapped (NFKC would also turn
# "cm²" into "cm2").
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def display_text(text: str | None) -> str:
    """A report as the window shows it: full-width punctuation as plain ASCII."""
    return (text or "").translate(_FULLWIDTH)


def excerpt(text: str, findings: list[str], limit: int = EXCERPT_CHARS) -> str:
    """The part of a report worth reading in a list: sentences that mention shared findings first."""
    text = " ".join(display_text(text).split())
    if len(text) <= limit:
        return text
    sentences = re.split(r"(?<=[.;])\s+", text)
    patterns = finding_patterns(findings)
    chosen = [s for s in sentences if any(p.search(s) for p in patterns)]
    rest = [s for s in sentences if s not in chosen]
    out = ""
    for sentence in chosen + rest:
        if len(out) + len(sentence) + 1 > limit:
            break
        out = f"{out} {sentence}".strip()
    if not out:
        out = text[: limit - 1].rsplit(" ", 1)[0]
    return out + " …"


def highlighted_html(text: str, findings: list[str], fg: str, bg: str) -> str:
    """HTML-escaped text with every mention of a shared finding wrapped in a coloured span."""
    parts: list[str] = []
    pos = 0
    for start, end in highlight_spans(text, findings):
        parts.append(html.escape(text[pos:start]))
        parts.append(f'<span style="background-color:{bg}; color:{fg};">'
                     f"{html.escape(text[start:end])}</span>")
        pos = end
    parts.append(html.escape(text[pos:]))
    return "".join(parts)


def short_date(value: Any) -> str:
    return str(value)[:10] if value else ""


def card_lines(hit: Any) -> tuple[str, str, str]:
    """A grid card's text: beside the rank the Hamming distance, then the calibrated match (never
    `1 - d / bits` as a percentage, which the cards still showed), then modality · view · date."""
    details = [v for v in (hit.case.get("modality"), hit.case.get("view"), short_date(hit.case.get("study_date"))) if v]
    return f"d {hit.distance}", match_text(hit), " · ".join(details) or (hit.case.get("domain") or "")


def match_text(hit: Any) -> str:
    """What a hit's distance means, calibrated on the library's own cases (core/search/ood.py): the
    share of in-domain matches it is closer than. `1 - distance / bits` read as a percentage looked
    like a probability (a chest X-ray "69 %" like a fundus photo), so it is not shown."""
    closer = getattr(hit, "closer_than", None)
    return "–" if closer is None else f"closer than {closer * 100:.0f} %"
