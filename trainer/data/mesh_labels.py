"""MeSH terms of IU X-ray / Open-i reports -> CheXpert classes (reference labels for the labeler).

NLM indexers tagged each Open-i report with MeSH-based terms "Heading/qualifier/...", or
"normal" for a normal study. They are the independent reference the chest labeler is measured
against (benchmarks/labeler_agreement.py). Mapping, by heading (qualifiers only where they decide):

| MeSH heading                                              | CheXpert class             |
|-----------------------------------------------------------|----------------------------|
| normal                                                    | No Finding                 |
| Mediastinum/{prominent, enlarged, widened}                | Enlarged Cardiomediastinum |
| Cardiomegaly; Cardiac Shadow/enlarged                     | Cardiomegaly               |
| Opacity; Infiltrate; Airspace Disease; Density/{lung,     | Lung Opacity               |
|   retrocardiac, costophrenic angle}                       |                            |
| Nodule; Mass; Granuloma; Calcified Granuloma;             | Lung Lesion                |
|   Granulomatous Disease; Cavitation                       |                            |
| Pulmonary Edema; Pulmonary Congestion; Heart Failure      | Edema                      |
| Consolidation                                             | Consolidation              |
| Pneumonia                                                 | Pneumonia                  |
| Pulmonary Atelectasis                                     | Atelectasis                |
| Pneumothorax; Hydropneumothorax; Hemopneumothorax         | Pneumothorax (+ Effusion)  |
| Pleural Effusion; Costophrenic Angle/../blunted           | Pleural Effusion           |
| Thickening/pleura; Cicatrix/pleura                        | Pleural Other              |
| Fractures, Bone                                           | Fracture                   |
| Catheters, Indwelling; Implanted Medical Device; Medical  | Support Devices            |
|   Device; Tube, Inserted; Surgical Instruments; Stents;   |                            |
|   Sutures                                                 |                            |

Other headings (Calcinosis, Thoracic Vertebrae, Emphysema, Cicatrix/lung, ...) are no CheXpert
class. "No Indexing" means the report was not indexed: it has no reference labels (`None`).
Blunted costophrenic angles count as effusion because CheXpert's mention list does so.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainer.data import chest_terms as ct

MESH_HEADINGS: dict[str, tuple[str, ...]] = {
    "normal": (ct.NO_FINDING,),
    "Cardiomegaly": (ct.CARDIOMEGALY,),
    "Opacity": (ct.OPACITY,),
    "Infiltrate": (ct.OPACITY,),
    "Airspace Disease": (ct.OPACITY,),
    "Nodule": (ct.LESION,),
    "Mass": (ct.LESION,),
    "Granuloma": (ct.LESION,),
    "Calcified Granuloma": (ct.LESION,),
    "Granulomatous Disease": (ct.LESION,),
    "Cavitation": (ct.LESION,),
    "Pulmonary Edema": (ct.EDEMA,),
    "Pulmonary Congestion": (ct.EDEMA,),
    "Heart Failure": (ct.EDEMA,),
    "Consolidation": (ct.CONSOLIDATION,),
    "Pneumonia": (ct.PNEUMONIA,),
    "Pulmonary Atelectasis": (ct.ATELECTASIS,),
    "Pneumothorax": (ct.PNEUMOTHORAX,),
    "Hydropneumothorax": (ct.PNEUMOTHORAX, ct.EFFUSION),
    "Hemopneumothorax": (ct.PNEUMOTHORAX, ct.EFFUSION),
    "Pleural Effusion": (ct.EFFUSION,),
    "Fractures, Bone": (ct.FRACTURE,),
    "Catheters, Indwelling": (ct.DEVICES,),
    "Implanted Medical Device": (ct.DEVICES,),
    "Medical Device": (ct.DEVICES,),
    "Tube, Inserted": (ct.DEVICES,),
    "Surgical Instruments": (ct.DEVICES,),
    "Stents": (ct.DEVICES,),
    "Sutures": (ct.DEVICES,),
}

# (heading, words of which one must be among the qualifiers) -> classes
MESH_QUALIFIED: dict[tuple[str, frozenset[str]], tuple[str, ...]] = {
    ("Mediastinum", frozenset({"prominent", "enlarged", "widened"})): (ct.ECM,),
    ("Cardiac Shadow", frozenset({"enlarged"})): (ct.CARDIOMEGALY,),
    ("Density", frozenset({"lung", "retrocardiac", "costophrenic angle"})): (ct.OPACITY,),
    ("Costophrenic Angle", frozenset({"blunted"})): (ct.EFFUSION,),
    ("Thickening", frozenset({"pleura"})): (ct.PLEURAL_OTHER,),
    ("Cicatrix", frozenset({"pleura"})): (ct.PLEURAL_OTHER,),
}


def mesh_term_classes(term: str) -> tuple[str, ...]:
    """CheXpert classes of one MeSH term such as "Pleural Effusion/right/small"."""
    heading, *qualifiers = (part.strip() for part in term.split("/"))
    if heading in MESH_HEADINGS:
        return MESH_HEADINGS[heading]
    for (name, needed), classes in MESH_QUALIFIED.items():
        if heading == name and needed.intersection(q.lower() for q in qualifiers):
            return classes
    return ()


def mesh_to_chexpert(terms: Iterable[str]) -> set[str] | None:
    """Reference CheXpert classes of a report's MeSH terms; None when it was not indexed."""
    terms = [t for t in terms if t.strip()]
    if not terms or any(t.strip() == "No Indexing" for t in terms):
        return None
    return {name for term in terms for name in mesh_term_classes(term)}
