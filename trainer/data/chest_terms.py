"""Mention phrases of the 14 CheXpert observations, as ordered regular-expression terms.

Modelled on the CheXpert labeler's mention lists (Irvin et al. 2019, github.com/stanfordmlgroup/
chexpert-labeler phrases/mention), extended with the wording of IU X-ray reports. Order matters:
at one text position the first matching term wins, so specific phrases come before generic ones
and *blockers* (label None: "pericardial effusion", "lytic lesion") hide a shorter mention that
would be wrong. A term with `status` set asserts it itself ("heart size is normal" -> 0) and skips
negation detection; otherwise the sentence's NegEx cues decide (see negation.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NO_FINDING = "No Finding"
ECM = "Enlarged Cardiomediastinum"
CARDIOMEGALY = "Cardiomegaly"
OPACITY = "Lung Opacity"
LESION = "Lung Lesion"
EDEMA = "Edema"
CONSOLIDATION = "Consolidation"
PNEUMONIA = "Pneumonia"
ATELECTASIS = "Atelectasis"
PNEUMOTHORAX = "Pneumothorax"
EFFUSION = "Pleural Effusion"
PLEURAL_OTHER = "Pleural Other"
FRACTURE = "Fracture"
DEVICES = "Support Devices"


@dataclass(frozen=True)
class Term:
    """Phrases (regex) that mention `labels`; `status` fixes the assertion when not None."""

    labels: tuple[str, ...]
    phrases: tuple[str, ...]
    status: int | None = None


def _gap(forbidden: str, max_chars: int = 40, stops: str = ".;:\n") -> str:
    """A short stretch of the same clause that contains none of the `forbidden` words."""
    return rf"(?:(?!\b(?:{forbidden}|but|however|although|though)\b)[^{stops}]){{0,{max_chars}}}?"


# Subjects that carry a size attribute ("the heart is normal in size").
_HEART = r"(?:heart(?: size)?|cardiac (?:size|silhouette|shadow|contours?|outline|borders?))"
_MEDIASTINUM = r"(?:(?:cardio)?mediastin(?:um|al)(?: (?:silhouette|contours?|outline|width|structures))?)"
_BOTH = (
    r"(?:heart and mediastinum|heart and mediastinal (?:silhouette|contours?)|"
    r"cardiac and mediastinal (?:silhouettes?|contours?|outlines?)|cardiomediastinal (?:silhouette|contours?|"
    r"outline|size)|cardiomediastinum|mediastinal and cardiac (?:silhouettes?|contours?))"
)
_WIDE = r"(?:enlarged|enlargement|widened|widening|prominent|prominence)"
_NORMAL = (
    r"(?:normal|within normal limits|within the normal limits|unremarkable|not enlarged|not large|"
    r"not widened|not prominent|top normal|top-normal|upper normal)"
)
# "Upper limits of normal" is normal: in IU X-ray, 1 of 56 such reports has MeSH Cardiomegaly,
# against 14 of 16 for "borderline".
_BORDERLINE = r"(?:borderline|mildly prominent)"
_SIDES = r"right|left|bilateral|both|lateral|posterior|mild|minimal"
_LINE_KINDS = (
    r"central venous|central|picc|venous|port|dialysis|arterial|jugular|subclavian|swan-ganz|hickman|catheter"
)
_TUBE_KINDS = (
    r"endotracheal|et|ng|nasogastric|orogastric|feeding|chest|tracheostomy|enteric|gastrostomy|dobhoff|"
    r"thoracostomy|drainage"
)
_NO_COMMA = ".;:,\n"  # an attribute across a comma belongs to the next noun ("heart size, enlarged aorta")
_SIZE_FORBID = r"enlarg\w*|large|increased|prominen\w*|widen\w*|cardiomegaly"
_NORMAL_FORBID = r"normal|not|no|unremarkable|without"

TERMS: tuple[Term, ...] = (
    # --- blockers: longer phrases whose shorter part would be a wrong mention -------------------
    Term((), (
        r"pericardial effusions?", r"joint effusions?",
        r"(?:lytic|sclerotic|blastic|bone|bony|osseous|expansile|skin) lesions?",
        r"(?:bone|bony|osseous) (?:density|densities)",
        r"nipple shadows?", r"tuberculosis", r"tubercul\w*", r"(?:body|muscle) mass",
        r"(?:gastric|stomach|colonic) (?:air|distension)", r"hilar (?:density|densities)",
        r"breast (?:density|densities|mass|masses)", r"lead (?:poisoning|apron)",
        r"soft tissue (?:density|edema|swelling)", r"soft tissues?",
    )),
    # --- cardiac size: explicit normal / borderline / enlarged ------------------------------------
    Term((ECM, CARDIOMEGALY), (
        rf"{_BOTH}{_gap(_SIZE_FORBID)}\b{_BORDERLINE}",
        rf"{_BORDERLINE}{_gap(_SIZE_FORBID, 20)}\b{_BOTH}",
    ), status=-1),
    Term((ECM, CARDIOMEGALY), (
        rf"{_BOTH}{_gap(_SIZE_FORBID)}\b{_NORMAL}",
        rf"(?:normal|unremarkable|stable normal) {_BOTH}",
        r"(?:normal|unremarkable) (?:heart|cardiac)(?: size)?(?: and|,) (?:mediastin\w*|cardiomediastin\w*)",
    ), status=0),
    Term((CARDIOMEGALY,), (
        rf"{_HEART}{_gap(_SIZE_FORBID)}\b{_BORDERLINE}",
        rf"{_BORDERLINE}{_gap(_SIZE_FORBID, 20)}\b(?:{_HEART}|cardiomegaly|enlarged heart|enlargement)",
    ), status=-1),
    Term((CARDIOMEGALY,), (
        rf"{_HEART}{_gap(_SIZE_FORBID)}\b{_NORMAL}",
        rf"(?:normal|unremarkable)(?: sized?)? {_HEART}",
        r"normal(?:-| )sized? heart",
    ), status=0),
    Term((ECM,), (
        rf"{_MEDIASTINUM}{_gap(_SIZE_FORBID)}\b{_NORMAL}",
        rf"(?:normal|unremarkable) {_MEDIASTINUM}",
    ), status=0),
    Term((CARDIOMEGALY,), (
        r"cardiomegaly", r"cardiomegally",
        rf"(?:enlarged|large|prominent|increased) {_HEART}",
        r"(?:heart|cardiac) enlargement", r"enlargement of the (?:heart|cardiac \w+)",
        rf"{_HEART}{_gap(_NORMAL_FORBID, stops=_NO_COMMA)}\b(?:enlarged|enlargement|large|increased|prominent)",
        r"cardiac silhouette size is increased",
    )),
    Term((ECM,), (
        rf"{_WIDE}(?: of)?(?: the)?(?: (?:upper|superior|mild|mildly|right|left|nonspecific))* {_MEDIASTINUM}",
        rf"{_MEDIASTINUM}{_gap(_NORMAL_FORBID)}\b{_WIDE}",
        r"(?:wide|widened) mediastinum", r"mediastinal (?:widening|enlargement|prominence|mass)",
        rf"(?:enlarged|widened|prominent) {_BOTH}",
    )),
    # --- pleura ---------------------------------------------------------------------------------
    Term((PNEUMOTHORAX, EFFUSION), (r"hydro ?pneumothora(?:x|ces)", r"hemo ?pneumothora(?:x|ces)")),
    Term((PNEUMOTHORAX,), (r"pneumothora(?:x|ces|xes)", r"ptx", r"pleural air(?: collections?)?")),
    Term((PLEURAL_OTHER,), (
        r"pleural (?:thickening|plaques?|scar(?:ring|s)?|calcifications?|fibrosis|reaction)",
        r"pleural(?:-| |/)parenchymal (?:scar(?:ring|s)?|thickening|changes?|opacit(?:y|ies))",
        r"thickening of the (?:\w+ )?pleura", r"fibrothorax", r"apical (?:pleural )?caps?(?:ping)?",
        r"(?:apical|pleural) capping", r"pleural based (?:opacity|density|thickening)",
        r"(?:fissural|fissure) thickening", r"thickening (?:in|of) the (?:\w+ )?fissures?",
    )),
    Term((EFFUSION,), (
        r"(?:pleural )?effusions?", r"pleural fluid", r"hydrothorax", r"hemothorax", r"empyema",
        r"fluid (?:in|within) the (?:\w+ )?(?:fissures?|pleural spaces?)",
        rf"blunt(?:ed|ing)(?: of)?(?: the)?(?: (?:{_SIDES}))*(?: costophrenic| cp)(?: angles?| recess(?:es)?| sulc[iu]s?)?",
        r"(?:costophrenic|cp)(?: angles?| recess(?:es)?| sulc[iu]s?)?(?: \w+)? blunt(?:ed|ing)",
        r"meniscus sign",
    )),
    # --- lung parenchyma ------------------------------------------------------------------------
    Term((EDEMA,), (
        r"o?edema",
        r"congestion",
        r"congestive (?:heart )?failure", r"heart failure", r"chf", r"fluid overload",
        r"kerley (?:b )?lines", r"cephalization", r"(?:pulmonary )?venous hypertension",
        r"(?:vascular|venous|vessel) (?:prominence|engorgement|redistribution)", r"engorge(?:d|ment)",
    )),
    Term((PNEUMONIA,), (
        r"pneumonias?", r"bronchopneumonias?", r"pneumonitis", r"infections?",
        r"infectious (?:process|etiology|infiltrates?|disease)", r"infectious",
    )),
    Term((CONSOLIDATION,), (
        r"consolidat(?:ion|ions|ive|ed)",
    )),
    Term((ATELECTASIS,), (
        r"atelecta(?:sis|ses|tic)", r"(?:lobar|lobe|lung) collapse", r"collapse of the (?:\w+ )?(?:lobe|lung)",
        r"collapsed (?:\w+ )?(?:lobe|lung)",
    )),
    Term((LESION,), (
        r"nodul(?:e|es|ar (?:opacit(?:y|ies)|densit(?:y|ies)|lesions?|opacification))", r"micronodul\w*",
        r"masses", r"mass", r"lesions?", r"granulom(?:a|as|ata)",
        r"granulomatous",
        r"(?:neoplasm|tumou?r|carcinoma|malignancy|metastas[ie]s|metastatic disease)",
        r"cavitary (?:lesion|mass|nodule)", r"cavitation", r"cavit(?:y|ies)",
    )),
    Term((OPACITY,), (
        r"(?:airspace|air space|alveolar|interstitial) (?:disease|process|opacit(?:y|ies)|opacification|filling)",
        r"opacit(?:y|ies)", r"opacification", r"opacified", r"infiltrat(?:e|es|ion|ive)",
        r"densit(?:y|ies)", r"haziness", r"hazy", r"ground(?:-| )glass", r"reticular",
        r"reticulonodular",
    )),
    # --- bones and devices ----------------------------------------------------------------------
    Term((FRACTURE,), (r"fractur(?:e|es|ed)", r"fx")),
    Term((DEVICES,), (
        r"pace ?makers?", r"pacers?", r"defibrillators?", r"a?icds?",
        rf"(?:{_LINE_KINDS}) (?:lines?|catheters?)", r"picc", r"line tip", r"catheters?",
        rf"(?:{_TUBE_KINDS}) tubes?", r"tubes?", r"tracheostomy",
        r"clips?",
        r"(?:sternotomy|sternal|cerclage) wires?", r"wires?", r"(?:pacer|pacemaker|pacing|cardiac) leads?",
        r"leads", r"stents?", r"(?:prosthetic|mechanical|replacement|artificial) (?:\w+ )?valves?",
        r"valve (?:replacement|prosthesis)", r"port-?a-?cath", r"portacath", r"mediport",
        r"(?:infusion|chest|subcutaneous|venous) port", r"hardware",
        r"sutures?", r"suture material", r"staples", r"drains?", r"electrodes?",
        r"(?:ecg|ekg|monitoring|telemetry) leads", r"devices?", r"generators?", r"stimulators?",
        r"cabg markers", r"coils?", r"ivc filter", r"loop recorder", r"shunt(?: tubing)?", r"tubing",
        r"prosthe(?:sis|ses|tic \w+)", r"anchors?",
        r"tip (?:projects?|projecting|overl\w+|terminat\w+|is|in|at|near|approximat\w+)",
    )),
)


def _compile(terms: tuple[Term, ...]) -> re.Pattern[str]:
    """One leftmost-first alternation over lower-case text; group `t<i>` is term i.

    Case-sensitive on purpose: callers lower-case once, which halves the matching time.
    """
    alternatives = (
        rf"(?P<t{i}>{'|'.join(f'(?:{p})' for p in term.phrases)})" for i, term in enumerate(terms)
    )
    return re.compile(rf"\b(?=\w)(?:{'|'.join(alternatives)})(?!\w)")


TERMS_RE = _compile(TERMS)

# Words that show a text is an (English) chest report, so "nothing found" means No Finding.
REPORT_VOCABULARY_RE = re.compile(
    r"\b(?:lungs?|heart|cardiac|chest|pleural|pulmonary|cardiopulmonary|mediastin\w*|thora\w*|normal|"
    r"unremarkable|clear|acute|abnormalit\w*|disease|findings?|negative|radiograph\w*|x-?ray)\b",
    re.IGNORECASE,
)


def term_index(match: re.Match[str]) -> int:
    """Index into TERMS of the term that produced `match`."""
    return int((match.lastgroup or "t-1")[1:])
