"""Each file's decode has a time limit: a file on which the decoder hangs is reported and
skipped, the other files of the batch are decoded, and the import never waits forever."""

from __future__ import annotations

import time

from medhash_app.core.ingest.decode import DecodeJob, Decoder
from tests.decode_jobs import hang_on_name


def _job(name: str) -> DecodeJob:
    return DecodeJob(path=f"/data/{name}", case_id=name, frame=None, salt=b"", folder="/tmp")


def test_a_hanging_file_is_skipped_and_the_rest_decoded():
    jobs = [_job(n) for n in ("a.dcm", "hang.dcm", "b.dcm", "c.dcm", "hang2.dcm", "d.dcm")]
    started = time.monotonic()
    with Decoder(2, limit_s=3.0, job_fn=hang_on_name) as decoder:
        results = decoder.run(jobs)
        again = decoder.run([_job("e.dcm")])  # the pool works again after its workers were killed
    assert time.monotonic() - started < 120
    assert [r.case_id for r in results] == [j.case_id for j in jobs]
    for r in results:
        if r.case_id.startswith("hang"):
            assert r.reason is not None and "longer than 3 s" in r.reason
        else:
            assert r.reason is None and r.facts == {"decoded": f"/data/{r.case_id}"}
    assert again[0].reason is None
