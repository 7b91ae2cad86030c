"""Long reports: section parsing, truncation / section selection / chunking within the tower's
window, and chunked encoding that reduces to plain encoding for short texts."""

from __future__ import annotations

import json
import random

import pytest
import torch

from trainer.data import long_text as lt
from trainer.errors import MedHashError
from trainer.models.tiny import TinyBackbone, WordHashTokenizer

FILLER = ["the", "lungs", "are", "clear", "bilaterally", "without", "focal", "consolidation", "and", "osseous",
          "structures", "intact", "with", "degenerative", "change", "of", "thoracic", "spine"]
IMPRESSION = "Moderate cardiomegaly with small bilateral pleural effusions."


def long_report(words: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    body = " ".join(rng.choice(FILLER) for _ in range(words))
    return (f"EXAMINATION: Chest PA and lateral.\nINDICATION: Shortness of breath.\nTECHNIQUE: Two views.\n"
            f"FINDINGS: {body}.\nIMPRESSION: {IMPRESSION}")


def n_tokens(tokenizer, text: str) -> int:
    return int(tokenizer([text])["attention_mask"].sum())


@pytest.fixture(scope="module")
def hf_tokenizer():
    from trainer.models.embedded import HFTokenizer, minilm_dir

    try:
        return HFTokenizer(str(minilm_dir()), 256)
    except MedHashError as exc:
        pytest.skip(f"embedded text tower not installed: {exc}")


def test_parse_sections_finds_headers_and_preamble():
    text = "Chest film.\nFINDINGS: Heart enlarged. No effusion.\nImpression:  Cardiomegaly.\nRecommendation: follow up."
    assert lt.parse_sections(text) == [("preamble", "Chest film."), ("findings", "Heart enlarged. No effusion."),
                                       ("impression", "Cardiomegaly."), ("recommendation", "follow up.")]
    assert lt.section_text(long_report(), "indication") == "Shortness of breath."
    assert lt.parse_sections("no headers at all") == [("preamble", "no headers at all")]


def test_reorder_puts_impression_then_findings_first():
    out = lt.reorder_sections(long_report(20))
    assert out.startswith(f"IMPRESSION: {IMPRESSION} FINDINGS: ")
    assert out.index("INDICATION:") > out.index("FINDINGS:")


@pytest.mark.parametrize("max_len", [32, 77])
def test_sections_mode_keeps_the_impression_truncate_loses_it(max_len):
    tok = WordHashTokenizer(max_length=512)
    report = long_report(400)
    assert n_tokens(tok, report) > 5 * max_len
    [sections] = lt.prepare_text(report, "sections", tok, max_len)
    [truncated] = lt.prepare_text(report, "truncate", tok, max_len)
    assert IMPRESSION in sections and n_tokens(tok, sections) <= max_len
    assert "cardiomegaly" not in truncated.lower() and n_tokens(tok, truncated) <= max_len


def test_chunks_cover_the_report_within_the_window(hf_tokenizer):
    report = long_report(700)
    windows = lt.prepare_text(report, "chunks", hf_tokenizer, 64)
    assert len(windows) > 5
    assert all(n_tokens(hf_tokenizer, w) <= 64 for w in windows)
    assert " ".join(windows).split() == report.split()  # nothing lost, nothing reordered


def test_short_text_is_one_window(hf_tokenizer):
    assert lt.prepare_text("No acute disease.", "chunks", hf_tokenizer, 256) == ["No acute disease."]


def test_unknown_mode_is_a_config_error():
    with pytest.raises(MedHashError, match="long_text"):
        lt.prepare_text("x", "summarise", WordHashTokenizer(), 64)
    with pytest.raises(MedHashError, match="long_text"):
        lt.LongTextTokenizer(WordHashTokenizer(), "summarise", 64)


def test_chunk_tokenizer_marks_each_window_with_its_report():
    tok = lt.LongTextTokenizer(WordHashTokenizer(max_length=16), "chunks", 16)
    out = tok(["a short one", long_report(60), "another short report"])
    owner = out["chunk_owner"].tolist()
    assert owner[0] == 0 and owner[-1] == 2 and owner.count(1) >= 4
    assert owner == sorted(owner)
    assert out["chunk_input_ids"].shape[0] == len(owner) and out["input_ids"].shape[0] == 3
    assert out["chunk_attention_mask"].sum(dim=1).max() <= 16


def test_chunked_encoding_of_short_texts_equals_plain_encoding():
    torch.manual_seed(0)
    backbone = TinyBackbone().eval()
    texts = ["small left pleural effusion", "no acute cardiopulmonary process seen today"]
    chunked = lt.LongTextTokenizer(backbone.tokenizer, "chunks", backbone.max_text_length)(texts)
    with torch.no_grad():
        plain = backbone.text_global(backbone.tokenizer(texts))
        pooled = lt.text_global(backbone, chunked)
        attention = lt.text_global(backbone, chunked, scores_fn=lambda g: g.sum(dim=1))
    torch.testing.assert_close(pooled, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attention, plain, rtol=1e-5, atol=1e-6)


def test_chunked_encoding_pools_the_windows_of_one_report_only():
    torch.manual_seed(0)
    backbone = TinyBackbone().eval()
    tok = lt.LongTextTokenizer(backbone.tokenizer, "chunks", 16)
    report = long_report(50)
    with torch.no_grad():
        alone = lt.text_global(backbone, tok([report]))
        mixed = lt.text_global(backbone, tok(["tiny", report, long_report(90, seed=3)]))
        windows = backbone.text_global(backbone.tokenizer(lt.prepare_text(report, "chunks", backbone.tokenizer, 16)))
    torch.testing.assert_close(mixed[1], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone[0], windows.mean(dim=0), rtol=1e-5, atol=1e-6)


def test_pool_chunks_attention_weights_follow_scores():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    owner = torch.tensor([0, 0, 1])
    out = lt.pool_chunks(g, owner, 2, scores=torch.tensor([100.0, 0.0, 3.0]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [5.0, 5.0]]))


def test_gather_chunk_tokens_lays_windows_end_to_end():
    tokens = torch.arange(3 * 2 * 1, dtype=torch.float32).view(3, 2, 1)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    out, out_mask = lt.gather_chunk_tokens(tokens, mask, torch.tensor([0, 0, 1]), 2)
    assert out.shape == (2, 4, 1)
    assert out[0, :, 0].tolist() == [0, 1, 2, 3] and out_mask[0].tolist() == [1, 1, 1, 0]
    assert out[1, :2, 0].tolist() == [4, 5] and out_mask[1].tolist() == [1, 1, 0, 0]


def test_real_iu_reports_keep_their_impression(iu_reports, hf_tokenizer):
    rows = [json.loads(line) for line in iu_reports.read_text(encoding="utf-8").splitlines()[:300]]
    rows = [r for r in rows if r.get("impression") and r.get("findings")]
    assert len(rows) > 50
    for r in rows:
        report = f"INDICATION: {r.get('indication') or ''}\nFINDINGS: {r['findings']}\nIMPRESSION: {r['impression']}"
        [prepared] = lt.prepare_text(report, "sections", hf_tokenizer, 64)
        head = " ".join(r["impression"].split()[:10])
        assert prepared.startswith(f"IMPRESSION: {head}"), r["uid"]
        assert n_tokens(hf_tokenizer, prepared) <= 64
