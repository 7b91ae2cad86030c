"""A search decodes its query image once (for the encoder and the image-statistics check), or not at all
when the caller passes it decoded (the window's viewer image), except where the reduced JPEG 2000 decode
must be used so that a file always ranks by the same pixels."""

from __future__ import annotations

from pathlib import Path

import pytest

from medhash_app.core.imaging import load_image
from medhash_app.core.search import SearchQuery
from medhash_app.core.session import MedHashSession


def _summary(result) -> tuple:
    return ([(h.case["id"], h.distance, h.closer_than) for h in result.hits], result.out_of_domain,
            result.out_of_domain_reason)


@pytest.fixture
def session(tiny_library: Path):
    with MedHashSession(tiny_library, device="cpu") as s:
        yield s


def _chest_file(session: MedHashSession) -> Path:
    return Path(next(c for c in session.library.iter_cases() if c["domain"] == "chest")["source_path"])


def test_a_decoded_query_image_is_not_decoded_again(session: MedHashSession, tmp_path: Path) -> None:
    path = _chest_file(session)
    expected = session.search(SearchQuery(image_path=path, k=8))
    gone = tmp_path / "moved-away.dcm"  # the search must not open the file: it is not there
    given = session.search(SearchQuery(image_path=gone, image=load_image(path), k=8))
    assert _summary(given) == _summary(expected) and expected.out_of_domain is not None


@pytest.mark.shared_data
def test_a_full_j2k_decode_is_not_used_where_the_search_decodes_reduced(session: MedHashSession,
                                                                        dicom_dir: Path) -> None:
    pytest.importorskip("glymur")
    path = dicom_dir / "xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossless.dcm"
    own = session.search(SearchQuery(image_path=path, k=8))
    with_viewer_image = session.search(SearchQuery(image_path=path, image=load_image(path), k=8))
    assert _summary(with_viewer_image) == _summary(own)
