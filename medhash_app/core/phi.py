"""What counts as identifying in the data users bring, and how log text is kept free of it.

The rule (docs/architecture.md, "What the library stores about patients"): manifest and sidecar
columns that identify a person or a study (names, birth dates, MRNs, accession numbers, contact
details, UIDs) are not stored; a PatientID (or an MRN column) only becomes the keyed patient key.
Columns this module does not recognise are kept in the case's `extra` as the user wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# A record's patient identifier, by the names manifests use for it (first non-empty one wins).
PATIENT_ID_COLUMNS = ("patient_id", "patientid", "mrn", "patient_mrn", "medical_record_number",
                      "medical_record_no", "record_number")

# Whole column names (lower case, without separators) that identify someone.
_IDENTIFYING_NAMES = frozenset({
    "patientid", "pid", "mrn", "patientmrn", "medicalrecordnumber", "medicalrecordno", "recordnumber",
    "otherpatientids", "issuerofpatientid", "hospitalnumber", "nhsnumber", "ssn", "socialsecuritynumber",
    "nationalid", "insurancenumber", "dob", "dateofbirth", "birthdate", "birthday", "patientbirthdate",
    "birthtime", "patientbirthtime", "patientname", "name", "fullname", "firstname", "lastname", "surname",
    "givenname", "familyname", "middlename", "maidenname", "mothersmaidenname", "patientmothersbirthname",
    "accession", "accessionnumber", "accessionno", "accno", "address", "patientaddress", "street",
    "city", "zip", "zipcode", "postcode", "postalcode", "phone", "telephone", "phonenumber", "mobile",
    "email", "emailaddress", "referringphysician", "referringphysicianname", "physician", "doctor",
    "performingphysicianname", "operatorsname", "institutionname", "institutionaddress",
    "studyinstanceuid", "seriesinstanceuid", "sopinstanceuid", "instanceuid", "uid",
    "frameofreferenceuid", "deviceserialnumber",
})
# Words that make any column identifying wherever they appear ("patient_dob", "home_phone").
_IDENTIFYING_WORDS = frozenset({"dob", "birth", "birthdate", "mrn", "accession", "address", "phone",
                                "telephone", "email", "ssn", "surname", "firstname", "lastname", "uid",
                                "uids", "nhs", "zipcode", "postcode"})
# "name" identifies a person unless it names a thing ("file_name", "label_name").
_THING_WORDS = frozenset({"file", "image", "img", "label", "class", "model", "dataset", "series", "study",
                          "view", "protocol", "scanner", "station", "site", "finding", "disease", "body",
                          "part", "modality", "sequence", "code", "column"})


def _words(column: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(column))
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def identifying_column(column: object) -> bool:
    """True when a manifest/sidecar column name says it holds something that identifies a person
    or a study (name, birth date, MRN, accession number, address, phone, e-mail, UID...)."""
    words = _words(str(column))
    if not words:
        return False
    if "".join(words) in _IDENTIFYING_NAMES or any(w in _IDENTIFYING_WORDS for w in words):
        return True
    return "name" in words and not any(w in _THING_WORDS for w in words)


def identifying_columns(columns: Iterable[object]) -> list[str]:
    return sorted(str(c) for c in columns if identifying_column(c))


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`")
_URL = re.compile(r"\s*<?https?://\S+>?")
_SEE_URL = re.compile(r"\s*Please see\s*<?https?://\S+>?[^.]*\.")  # pydicom's pointer to the standard
_LONG_TOKEN = re.compile(r"\b[\w.^=-]{24,}\b")
_PERSON_NAME = re.compile(r"[^\s'\"]*\^[^\s'\"]*")  # DICOM PN components are joined by ^
_DOTTED_NUMBER = re.compile(r"\b\d+(?:\.\d+){3,}\b")  # a UID, however short


def redact(text: object, limit: int = 240) -> str:
    """Log-safe text of a library's (pydicom's) message: quoted values, long tokens (UIDs, names
    joined with ^) and URLs removed, one line, at most `limit` characters. Decoder messages quote the
    offending value ("Invalid value for VR UI: '1.2.3.X'"), which may be a name or an identifier."""
    line = " ".join(str(text).split())
    line = _SEE_URL.sub("", line)
    line = _URL.sub("", line)
    line = _QUOTED.sub("'…'", line)
    line = _LONG_TOKEN.sub("…", line)
    line = _PERSON_NAME.sub("…", line)
    line = _DOTTED_NUMBER.sub("…", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"
