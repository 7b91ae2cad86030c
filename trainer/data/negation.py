"""NegEx-style assertion of concept mentions: present (1), negated (0) or uncertain (-1).

A small NegEx (Chapman et al. 2001) with cue lists modelled on NegEx and the CheXpert labeler
(Irvin et al. 2019), written here rather than taken from negspacy/medspaCy because those bring the
whole spaCy stack into the frozen desktop app for what is a handful of regular expressions. Cues
are found once per sentence in one regex pass; each mention is resolved with binary searches and a
bounded window, so a very long text costs O(n log n), never a quadratic scan.

Rules (per sentence):
- a *pre* cue ("no", "possible") covers mentions after it, a *post* cue ("is not seen",
  "is suspected") mentions before it, up to `MAX_SCOPE_WORDS` words and never across a
  terminator ("but", "however", ...);
- precedence: a covering negated-uncertainty cue ("cannot exclude") -> -1, else a negation -> 0,
  else an uncertainty -> -1, else 1 (CheXpert's order);
- pseudo-negations ("no change", "not only") are matched so that they hide the "no"/"not" inside.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

PRESENT, ABSENT, UNCERTAIN = 1, 0, -1
MAX_SCOPE_WORDS = 12  # reaches the end of "no evidence of focal airspace disease, pneumothorax, or effusion"

# Kinds, in the order they are tried at one text position (earlier kinds win ties).
PSEUDO = "pseudo"
NEG_UNCERTAIN = "neg_unc"  # "cannot exclude X", "X is not excluded": negation words, uncertain meaning
NEG_POST = "neg_post"
UNC_POST = "unc_post"
UNC_BOTH = "unc_both"  # "X versus Y"
NEG_PRE = "neg_pre"
UNC_PRE = "unc_pre"
TERMINATOR = "term"

_SEEN = (
    r"seen|visualized|visualised|identified|demonstrated|appreciated|present|evident|noted|visible|"
    r"detected|shown|apparent"
)
_HEDGED = (
    r"possible|questioned|suspected|likely|probable|uncertain|equivocal|in question|"
    r"not (?:entirely |completely )?(?:clear|certain|definite)"
)
_NOT_EXCLUDED = r"(?:entirely |completely |totally |definitely )?(?:exclude[ds]?|ruled? out)"
CUES: dict[str, tuple[str, ...]] = {
    PSEUDO: (
        r"no (?:significant |interval |appreciable |substantial |definite )?change",
        r"no (?:significant |interval )?(?:increase|decrease|worsening|improvement)",
        r"not (?:significantly )?(?:changed|only|necessarily)",
        r"without (?:significant |interval )?change",
        r"gram negative",
    ),
    NEG_UNCERTAIN: (
        rf"(?:cannot|can not|can't|could not|not|difficult to) (?:be )?{_NOT_EXCLUDED}",
        rf"(?:is|are|was|were) not (?:be )?{_NOT_EXCLUDED}",
        rf"(?:has|have) not been {_NOT_EXCLUDED}",
    ),
    NEG_POST: (
        rf"(?:is|are|was|were|has been|have been) (?:no longer|not) (?:{_SEEN})",
        r"(?:is|are|was|were) absent",
        r"(?:has|have) (?:since |completely |nearly completely |largely )?resolved",
        r"(?:has|have) been (?:removed|ruled out|excluded)",
        r"(?:is|are|was|were) (?:now )?(?:resolved|ruled out)",
        r"no longer (?:present|seen|visible|identified|evident|visualized)",
    ),
    UNC_POST: (
        rf"(?:is|are|was|were) (?:also |still )?(?:{_HEDGED})",
        r"(?:could|may|might) (?:also )?be (?:present|seen|considered|there)",
        r"(?:is|are) (?:a |the )?(?:differential|consideration)",
        r"(?:cannot|can not) be (?:confirmed|determined)",
        r"of (?:uncertain|unclear|questionable) significance",
    ),
    UNC_BOTH: (r"versus", r"vs\.?"),
    NEG_PRE: (
        r"no",
        r"not",
        r"without",
        r"negative for",
        r"free of",
        r"clear of",
        r"absence of",
        r"resolution of",
        r"resolved",
        r"resolving",
        r"removal of",
        r"neither",
        r"nor",
        r"never",
        r"fails to reveal",
        r"no longer",
        r"removed",
    ),
    UNC_PRE: (
        r"may(?: be| represent| reflect| indicate| include| relate| also)?",
        r"might(?: be| represent)?",
        r"could(?: be| represent| reflect| indicate| also)?",
        r"possible",
        r"possibly",
        r"probable",
        r"probably",
        r"likely",
        r"presumably",
        r"presumed",
        r"perhaps",
        r"question(?:able)?(?: of)?",
        r"suspicious(?: for| of)?",
        r"suspect(?:ed)?",
        r"suspicion(?: for| of)?",
        r"suggest(?:s|ed|ing|ive)?(?: of)?",
        r"concern(?:ing)?(?: for| of)?",
        r"worrisome(?: for)?",
        r"consider(?:ed|ation)?(?: of)?",
        r"differential(?: diagnosis)?(?: includes?)?",
        r"borderline",
        r"equivocal",
        r"rule out",
        r"r/o",
        r"cannot (?:be )?(?:entirely )?(?:confirmed|determined)",
    ),
    TERMINATOR: (
        r"but",
        r"however",
        r"although",
        r"though",
        r"except(?: for)?",
        r"aside from",
        r"apart from",
        r"whereas",
        r"nevertheless",
        r"yet",
        r"there (?:is|are|has been|have been)",
        r"with (?:the )?exception of",
        r"other than",
        r"otherwise",
    ),
}

_ORDER = (PSEUDO, NEG_UNCERTAIN, NEG_POST, UNC_POST, UNC_BOTH, NEG_PRE, UNC_PRE, TERMINATOR)
_CUE_RE = re.compile(  # lower-case text only (see SentenceContext.of)
    r"\b(?=\w)(?:"
    + "|".join(
        rf"(?P<{kind}>(?:{'|'.join(sorted(CUES[kind], key=len, reverse=True))})(?![\w-]))" for kind in _ORDER
    )
    + ")"
)
_WORD_RE = re.compile(r"\w+")

_PRE_KINDS = {NEG_UNCERTAIN: "strong_unc", NEG_PRE: "neg", UNC_PRE: "unc", UNC_BOTH: "unc"}
_POST_KINDS = {NEG_UNCERTAIN: "strong_unc", NEG_POST: "neg", UNC_POST: "unc", UNC_BOTH: "unc"}


@dataclass(frozen=True)
class _Cue:
    start: int
    end: int
    effect: str  # "strong_unc" | "neg" | "unc"


@dataclass
class SentenceContext:
    """Cues and word offsets of one sentence, found once and queried per mention."""

    text: str
    pre: list[_Cue] = field(default_factory=list)
    post: list[_Cue] = field(default_factory=list)
    terminators: list[int] = field(default_factory=list)  # start offsets
    word_starts: list[int] = field(default_factory=list)
    _pre_ends: list[int] = field(default_factory=list, repr=False)
    _post_starts: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, text: str) -> SentenceContext:
        """Context of one sentence; mention offsets refer to `text.lower()` (pass it lower-cased)."""
        text = text.lower()
        ctx = cls(text, word_starts=[m.start() for m in _WORD_RE.finditer(text)])
        for m in _CUE_RE.finditer(text):
            kind = m.lastgroup or ""
            if kind in _PRE_KINDS:
                ctx.pre.append(_Cue(m.start(), m.end(), _PRE_KINDS[kind]))
            if kind in _POST_KINDS:
                ctx.post.append(_Cue(m.start(), m.end(), _POST_KINDS[kind]))
            if kind == TERMINATOR:
                ctx.terminators.append(m.start())
        ctx._pre_ends = [c.end for c in ctx.pre]
        ctx._post_starts = [c.start for c in ctx.post]
        return ctx

    def _words_between(self, a: int, b: int) -> int:
        return bisect_left(self.word_starts, b) - bisect_left(self.word_starts, a)

    def _terminated(self, a: int, b: int) -> bool:
        """True when a terminator starts inside [a, b)."""
        return bisect_left(self.terminators, b) > bisect_left(self.terminators, a)

    def _effects(self, start: int, end: int) -> set[str]:
        found: set[str] = set()
        i = bisect_right(self._pre_ends, start) - 1
        while i >= 0:  # pre cues ending before the mention, nearest first, until out of scope
            cue = self.pre[i]
            if self._terminated(cue.end, start) or self._words_between(cue.end, start) > MAX_SCOPE_WORDS:
                break
            found.add(cue.effect)
            i -= 1
        j = bisect_left(self._post_starts, end)
        while j < len(self.post):  # post cues starting after the mention, nearest first
            cue = self.post[j]
            if self._terminated(end, cue.start) or self._words_between(end, cue.start) > MAX_SCOPE_WORDS:
                break
            found.add(cue.effect)
            j += 1
        return found

    def assertion(self, start: int, end: int) -> int:
        """Status of the mention at [start, end): PRESENT, ABSENT or UNCERTAIN."""
        effects = self._effects(start, end)
        if "strong_unc" in effects:
            return UNCERTAIN
        if "neg" in effects:
            return ABSENT
        if "unc" in effects:
            return UNCERTAIN
        return PRESENT


_SENTENCE_END_RE = re.compile(r"(?<=[.!?;])\s+|(?<=[a-z)][.!?])(?=[A-Z])|\s*\n\s*|(?<=\.)(?=\d+\.\s)")


def split_sentences(text: str) -> list[str]:
    """Sentences of a report; also splits "apex.There" (a missing space, common in IU X-ray)."""
    return [s for s in (p.strip() for p in _SENTENCE_END_RE.split(text)) if s]
