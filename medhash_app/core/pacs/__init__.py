"""Connect to the hospital's PACS (no Qt): a DICOM Storage SCP that receives studies (`listener`),
DICOMweb query and retrieve (`dicomweb`), and the one place where an instance that arrived over the
network becomes a case (`received`): written atomically into the library's `received/` folder, then
ingested through the same pipeline as files on disk. docs/pacs.md says what is accepted and kept."""

from medhash_app.core.pacs.errors import PacsError
from medhash_app.core.pacs.received import RECEIVED_DIR, Received, ReceivedStore

__all__ = ["RECEIVED_DIR", "PacsError", "Received", "ReceivedStore"]
