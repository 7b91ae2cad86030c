"""Report text for the demo studies, written from the same case description the painter used.

Chest: FINDINGS + IMPRESSION in radiology style; every drawn finding is stated (with the side and
zone it was drawn at, sometimes hedged: "may represent atelectasis"), findings that are absent
are often negated explicitly ("No pneumothorax or pleural effusion."), so a report labeler has
negation to deal with. Positive sentences never contain a negation word, and no sentence names a
class that was not drawn unless it negates it. Fundus: ODIR-style keywords joined by the
full-width comma the ODIR graders used.
"""

from __future__ import annotations

import numpy as np

from .chest import ChestCase
from .fundus import FundusCase

ODIR_SEPARATOR = "\uff0c"  # "，" as in ODIR-5K's diagnostic keywords
_ORDINAL = {4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth"}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _location(rng: np.random.Generator, side: str, zone: str) -> str:
    if rng.random() < 0.5:
        return f"{side} {'mid' if zone == 'middle' else zone} lung zone"
    if zone == "middle":
        return "right middle lobe" if side == "right" else "lingula"
    return f"{side} {zone} lobe"


# --------------------------------------------------------------------------------------------
# Chest


def chest_report(case: ChestCase, rng: np.random.Generator) -> str:
    """FINDINGS and IMPRESSION for a chest study."""
    findings, impressions = [], []
    for label, detail in case.details.items():
        finding, impression = _CHEST_SENTENCES[label](rng, detail)
        findings.append(finding)
        impressions.append(impression)
    findings = _mix_in_negatives(rng, case, findings)
    if set(case.details) <= {"Support Devices"}:  # no pathology: a normal impression (devices aside)
        normal = ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality."]
        impressions.insert(0, _pick(rng, normal if case.details else [*normal, "Normal chest radiograph."]))
    if len(impressions) > 1:
        impressions = [f"{i}. {text}" for i, text in enumerate(impressions, 1)]
    return f"FINDINGS: {' '.join(findings)}\n\nIMPRESSION: {' '.join(impressions)}"


def _mix_in_negatives(rng: np.random.Generator, case: ChestCase, positives: list[str]) -> list[str]:
    """Heart first, then the positives, then negations of what is absent, in a report's usual order."""
    present = set(case.details)
    heart = [] if "Cardiomegaly" in present else [_pick(rng, [
        "Heart size is normal.", "The heart is normal in size.", "Normal heart size.",
        "The cardiomediastinal silhouette is within normal limits."])]
    lungs = [] if present & {"Lung Opacity", "Consolidation", "Lung Lesion", "Atelectasis", "Edema"} else [
        _pick(rng, ["The lungs are clear.", "Lungs are well expanded and clear.", "No focal consolidation."])]
    negatives = []
    pleural = [name for name in ("pneumothorax", "pleural effusion")
               if {"pneumothorax": "Pneumothorax", "pleural effusion": "Pleural Effusion"}[name] not in present]
    if len(pleural) == 2:
        negatives.append(_pick(rng, ["No pneumothorax or pleural effusion.", "No pleural effusion or pneumothorax.",
                                     "There is no pneumothorax or effusion."]))
    elif pleural:
        negatives.append(f"No {pleural[0]}.")
    if "Edema" not in present and rng.random() < 0.4:
        negatives.append(_pick(rng, ["No pulmonary edema.", "No vascular congestion or edema."]))
    if "Fracture" not in present and rng.random() < 0.5:
        negatives.append(_pick(rng, ["No acute osseous abnormality.", "No displaced rib fracture."]))
    return heart + positives + lungs + negatives


def _cardiomegaly(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    sev = d["severity"]
    adverb = {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}[sev]
    finding = _pick(rng, [f"The heart is {adverb} enlarged.", f"{sev.capitalize()} cardiomegaly.",
                          "The cardiac silhouette is enlarged."])
    return finding, _pick(rng, ["Cardiomegaly.", f"{sev.capitalize()} cardiomegaly."])


def _effusion(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    size, side = d["size"], d["side"]
    finding = _pick(rng, [f"{size.capitalize()} {side} pleural effusion.",
                          f"There is a {size} {side} pleural effusion with blunting of the {side} costophrenic angle.",
                          f"Blunting of the {side} costophrenic angle consistent with a {size} pleural effusion."])
    return finding, f"{size.capitalize()} {side} pleural effusion."


def _pneumothorax(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    size, side = d["size"], d["side"]
    finding = _pick(rng, [f"{size.capitalize()} {side} apical pneumothorax.",
                          f"There is a {size} {side} apical pneumothorax with a visible pleural line."])
    return finding, f"{size.capitalize()} {side} pneumothorax."


def _opacity(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    loc = _location(rng, d["side"], d["zone"])
    if d.get("uncertain"):
        return (f"Subtle opacity in the {loc} may reflect early airspace disease.",
                f"Possible opacity in the {loc}.")
    finding = _pick(rng, [f"Patchy opacity in the {loc}.", f"Ill-defined airspace opacity in the {loc}."])
    return finding, f"Opacity in the {loc}."


def _consolidation(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    loc = _location(rng, d["side"], d["zone"])
    if d.get("uncertain"):
        return (f"Dense area in the {loc} may represent consolidation.", f"Possible {loc} consolidation.")
    finding = _pick(rng, [f"Focal consolidation in the {loc}.", f"Dense consolidation of the {loc}.",
                          f"Consolidation in the {loc} with air bronchograms."])
    return finding, f"Consolidation in the {loc}."


def _lesion(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    loc, size = _location(rng, d["side"], d["zone"]), d["size_cm"]
    finding = _pick(rng, [f"A {size} cm rounded nodule in the {loc}.",
                          f"A well-circumscribed {size} cm nodule projects over the {loc}."])
    return finding, f"Pulmonary nodule in the {loc}; CT is recommended."


def _atelectasis(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    side = d["side"]
    if d.get("uncertain"):
        return (f"Streaky band at the {side} lung base may represent atelectasis.",
                f"Possible {side} basilar atelectasis.")
    finding = _pick(rng, [f"Linear atelectasis at the {side} lung base.",
                          f"Plate-like atelectasis in the {side} lower zone."])
    return finding, f"{side.capitalize()} basilar atelectasis."


def _edema(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    sev = d["severity"]
    finding = _pick(rng, [f"Bilateral perihilar vascular indistinctness consistent with {sev} pulmonary edema.",
                          f"{sev.capitalize()} interstitial pulmonary edema.",
                          f"Pulmonary vascular congestion with {sev} edema."])
    return finding, f"{sev.capitalize()} pulmonary edema."


def _fracture(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    side, rib = d["side"], _ORDINAL[d["rib"]]
    finding = _pick(rng, [f"Acute fracture of the {side} posterior {rib} rib.",
                          f"Fracture of the {side} {rib} rib with mild step-off."])
    return finding, f"{side.capitalize()} {rib} rib fracture."


_DEVICE_TEXT = {
    "pacemaker": "Left chest wall pacemaker with lead terminating in the right ventricle.",
    "central line": "Right subclavian central venous catheter with tip in the superior vena cava.",
    "endotracheal tube": "Endotracheal tube in place, tip about 4 cm above the carina.",
}


def _devices(rng: np.random.Generator, d: dict) -> tuple[str, str]:
    finding = " ".join(_DEVICE_TEXT[kind] for kind in d["devices"])
    return finding, _pick(rng, ["Support devices as described.", "Lines and tubes in satisfactory position."])


_CHEST_SENTENCES = {
    "Cardiomegaly": _cardiomegaly, "Pleural Effusion": _effusion, "Pneumothorax": _pneumothorax,
    "Lung Opacity": _opacity, "Consolidation": _consolidation, "Lung Lesion": _lesion,
    "Atelectasis": _atelectasis, "Edema": _edema, "Fracture": _fracture, "Support Devices": _devices,
}


# --------------------------------------------------------------------------------------------
# Fundus


def fundus_report(case: FundusCase, rng: np.random.Generator) -> str:
    """ODIR-style diagnostic keywords for one eye, e.g. "moderate non proliferative retinopathy"."""
    if not case.details:
        return "normal fundus"
    words = [_fundus_keyword(code, detail, rng) for code, detail in case.details.items()]
    order = rng.permutation(len(words))
    return ODIR_SEPARATOR.join(words[i] for i in order)


def _fundus_keyword(code: str, d: dict, rng: np.random.Generator) -> str:
    if code == "D":
        options = {"mild": ["mild nonproliferative retinopathy"],
                   "moderate": ["moderate non proliferative retinopathy", "diabetic retinopathy"],
                   "severe": ["severe nonproliferative retinopathy"]}[d["severity"]]
        return _pick(rng, options)
    if code == "G":
        return "glaucoma" if d["cup_ratio"] >= 0.75 else "suspected glaucoma"
    if code == "A":
        # not "drusen" alone: ODIR files bare drusen under O (other), not A
        return "wet age-related macular degeneration" if d["wet"] else "dry age-related macular degeneration"
    if code == "O":
        return _pick(rng, ["laser spot", "post laser photocoagulation"])
    return {"C": "cataract", "H": "hypertensive retinopathy", "M": "pathological myopia"}[code]
