"""A typed or piped report query that is not valid Unicode is refused with one clear reason."""

from __future__ import annotations

import os

import pytest

from medhash_app.core.encoder.service import clean_report
from medhash_app.core.errors import InvalidReportError


def test_non_utf8_query_text_is_refused_by_name():
    # What Python makes of bytes 0xff 0xfe in argv on a UTF-8 system (surrogateescape).
    text = os.fsdecode(b"small effusion \xff\xfe")
    with pytest.raises(InvalidReportError, match="not valid UTF-8") as caught:
        clean_report(text, "--text")
    assert caught.value.item == "--text"


def test_valid_text_is_kept_and_whitespace_folded():
    assert clean_report("  small\n left  effusion ", "--text") == "small left effusion"
