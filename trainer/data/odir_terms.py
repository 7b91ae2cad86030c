"""ODIR-5K diagnostic keywords -> ODIR class codes, one deliberate row per keyword.

ODIR-5K graders describe each eye with keywords joined by a (Chinese) comma, e.g.
"moderate non proliferative retinopathy，laser spot". The table holds every keyword of the ODIR-5K
training annotations (those of our half, checked with `sorted(set(...))` over pairs.jsonl, plus the
rest of the published vocabulary). Decisions:
- D: every grade of (non)proliferative diabetic retinopathy; "suspected ..." is uncertain (-1);
- O: other fundus disease, including signs of treatment ("laser spot", "post laser
  photocoagulation") and media opacities that are not cataract ("refractive media opacity",
  "vitreous opacity"), as the ODIR graders file them;
- None: notes on the photograph, not the eye ("lens dust", "low image quality", "image offset",
  "optic disk photographically invisible", "no fundus image", "anterior segment image"): no label,
  and not "normal" either.
Keywords outside the table fall back to a few stems (`_FALLBACK`), else give no label.
"""

from __future__ import annotations

import re
import unicodedata

PRESENT, UNCERTAIN = 1, -1

# keyword -> (code, status) or None for an image-quality note.
ODIR_KEYWORDS: dict[str, tuple[str, int] | None] = {
    # normal
    "normal fundus": ("N", PRESENT),
    # diabetic retinopathy
    "diabetic retinopathy": ("D", PRESENT),
    "mild nonproliferative retinopathy": ("D", PRESENT),
    "mild non proliferative retinopathy": ("D", PRESENT),
    "moderate non proliferative retinopathy": ("D", PRESENT),
    "moderate nonproliferative retinopathy": ("D", PRESENT),
    "severe nonproliferative retinopathy": ("D", PRESENT),
    "severe non proliferative retinopathy": ("D", PRESENT),
    "nonproliferative retinopathy": ("D", PRESENT),
    "proliferative diabetic retinopathy": ("D", PRESENT),
    "severe proliferative diabetic retinopathy": ("D", PRESENT),
    "suspected diabetic retinopathy": ("D", UNCERTAIN),
    "suspicious diabetic retinopathy": ("D", UNCERTAIN),
    "suspected moderate non proliferative retinopathy": ("D", UNCERTAIN),
    # glaucoma
    "glaucoma": ("G", PRESENT),
    "suspected glaucoma": ("G", UNCERTAIN),
    # cataract
    "cataract": ("C", PRESENT),
    "suspected cataract": ("C", UNCERTAIN),
    # age-related macular degeneration
    "age-related macular degeneration": ("A", PRESENT),
    "dry age-related macular degeneration": ("A", PRESENT),
    "wet age-related macular degeneration": ("A", PRESENT),
    # hypertensive retinopathy
    "hypertensive retinopathy": ("H", PRESENT),
    # pathological myopia
    "pathological myopia": ("M", PRESENT),
    "myopia retinopathy": ("M", PRESENT),
    "myopic retinopathy": ("M", PRESENT),
    "myopic maculopathy": ("M", PRESENT),
    # other abnormalities: vascular
    "branch retinal vein occlusion": ("O", PRESENT),
    "central retinal vein occlusion": ("O", PRESENT),
    "old branch retinal vein occlusion": ("O", PRESENT),
    "old central retinal vein occlusion": ("O", PRESENT),
    "branch retinal artery occlusion": ("O", PRESENT),
    "central retinal artery occlusion": ("O", PRESENT),
    "retinal artery macroaneurysm": ("O", PRESENT),
    "arteriosclerosis": ("O", PRESENT),
    "white vessel": ("O", PRESENT),
    "vessel tortuosity": ("O", PRESENT),
    "vascular loops": ("O", PRESENT),
    "retinal vascular sheathing": ("O", PRESENT),
    "suspected retinal vascular sheathing": ("O", UNCERTAIN),
    "intraretinal hemorrhage": ("O", PRESENT),
    "intraretinal microvascular abnormality": ("O", PRESENT),
    "suspected microvascular anomalies": ("O", UNCERTAIN),
    # other: macula and membranes
    "drusen": ("O", PRESENT),
    "maculopathy": ("O", PRESENT),
    "epiretinal membrane": ("O", PRESENT),
    "macular epiretinal membrane": ("O", PRESENT),
    "epiretinal membrane over the macula": ("O", PRESENT),
    "optic disk epiretinal membrane": ("O", PRESENT),
    "suspected macular epimacular membrane": ("O", UNCERTAIN),
    "spotted membranous change": ("O", PRESENT),
    "macular hole": ("O", PRESENT),
    "macular coloboma": ("O", PRESENT),
    "macular pigmentation disorder": ("O", PRESENT),
    "central serous chorioretinopathy": ("O", PRESENT),
    "idiopathic choroidal neovascularization": ("O", PRESENT),
    # other: atrophy, pigment, choroid
    "atrophy": ("O", PRESENT),
    "atrophic change": ("O", PRESENT),
    "chorioretinal atrophy": ("O", PRESENT),
    "diffuse chorioretinal atrophy": ("O", PRESENT),
    "chorioretinal atrophy with pigmentation proliferation": ("O", PRESENT),
    "diffuse retinal atrophy": ("O", PRESENT),
    "oval yellow-white atrophy": ("O", PRESENT),
    "peripapillary atrophy": ("O", PRESENT),
    "retinal pigment epithelium atrophy": ("O", PRESENT),
    "depigmentation of the retinal pigment epithelium": ("O", PRESENT),
    "retinal pigment epithelial hypertrophy": ("O", PRESENT),
    "pigment epithelium proliferation": ("O", PRESENT),
    "retinal pigmentation": ("O", PRESENT),
    "pigmentation disorder": ("O", PRESENT),
    "abnormal pigment": ("O", PRESENT),
    "retinitis pigmentosa": ("O", PRESENT),
    "suspected retinitis pigmentosa": ("O", UNCERTAIN),
    "tessellated fundus": ("O", PRESENT),
    "old chorioretinopathy": ("O", PRESENT),
    "old choroiditis": ("O", PRESENT),
    "punctate inner choroidopathy": ("O", PRESENT),
    "choroidal nevus": ("O", PRESENT),
    "congenital choroidal coloboma": ("O", PRESENT),
    "retinochoroidal coloboma": ("O", PRESENT),
    "wedge white line change": ("O", PRESENT),
    "wedge-shaped change": ("O", PRESENT),
    # other: optic nerve
    "optic disc edema": ("O", PRESENT),
    "optic discitis": ("O", PRESENT),
    "optic nerve atrophy": ("O", PRESENT),
    "myelinated nerve fibers": ("O", PRESENT),
    "glial remnants anterior to the optic disc": ("O", PRESENT),
    "morning glory syndrome": ("O", PRESENT),
    "suspected abnormal color of optic disc": ("O", UNCERTAIN),
    # other: retina detachment, folds, surgery
    "retinal detachment": ("O", PRESENT),
    "rhegmatogenous retinal detachment": ("O", PRESENT),
    "retina fold": ("O", PRESENT),
    "silicone oil eye": ("O", PRESENT),
    "laser spot": ("O", PRESENT),
    "post laser photocoagulation": ("O", PRESENT),
    "post retinal laser surgery": ("O", PRESENT),
    "post retinal photocoagulation": ("O", PRESENT),
    "fundus laser photocoagulation spots": ("O", PRESENT),
    # other: media
    "refractive media opacity": ("O", PRESENT),
    "vitreous opacity": ("O", PRESENT),
    "vitreous degeneration": ("O", PRESENT),
    "asteroid hyalosis": ("O", PRESENT),
    # notes on the photograph, not findings
    "lens dust": None,
    "low image quality": None,
    "image offset": None,
    "optic disk photographically invisible": None,
    "no fundus image": None,
    "anterior segment image": None,
}

_OTHER_STEMS = (
    r"retin|macul|choroid|optic|vitreous|drusen|occlusion|atroph|membrane|hemorrhage|haemorrhage|exudate|"
    r"laser|pigment|edema|oedema|coloboma|detachment"
)
# Unknown keywords: stems checked in order; "suspect" makes the match uncertain.
_FALLBACK: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), code)
    for pattern, code in (
        (r"\bnormal fundus\b", "N"),
        (r"\bhypertensive\b", "H"),
        (r"\bdiabet|\b(?:non ?)?proliferative\b", "D"),
        (r"\bglaucoma", "G"),
        (r"\bcataract", "C"),
        (r"\bmacular degeneration|\bamd\b", "A"),
        (r"\bmyopi", "M"),
        (rf"\b(?:{_OTHER_STEMS})", "O"),
    )
)
_SEPARATORS_RE = re.compile(r"[,;、\n]+")
_SPACES_RE = re.compile(r"\s+")


def split_keywords(text: str) -> list[str]:
    """Normalised keywords of one eye ("，" and "," separate; case and spacing do not matter)."""
    text = unicodedata.normalize("NFKC", text).lower()  # NFKC turns "，" into ","
    return [k for k in (_SPACES_RE.sub(" ", part).strip() for part in _SEPARATORS_RE.split(text)) if k]


def _keyword_code(keyword: str) -> tuple[str, int] | None:
    if keyword in ODIR_KEYWORDS:
        return ODIR_KEYWORDS[keyword]
    for pattern, code in _FALLBACK:
        if pattern.search(keyword):
            return code, UNCERTAIN if "suspect" in keyword else PRESENT
    return None


def fundus_keyword_status(text: str) -> dict[str, int]:
    """{ODIR code: 1 present | -1 suspected} of one eye; N only when no other code is there."""
    status: dict[str, int] = {}
    for keyword in split_keywords(text):
        found = _keyword_code(keyword)
        if found is not None:
            code, value = found
            status[code] = max(status.get(code, value), value)
    if len(status) > 1:
        status.pop("N", None)
    return status
