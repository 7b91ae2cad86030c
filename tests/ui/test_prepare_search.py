"""Opening a library loads the search's model and codes in the background (session.warm_up), and the
status bar says so, so the first drop does not wait seconds for them."""

from __future__ import annotations

from pathlib import Path

from medhash_app.core.search import SearchQuery


def test_opening_a_library_prepares_search_and_says_so(qtbot, window, open_library, tiny_library: Path) -> None:
    texts: list[str] = []
    window.state.preparing.connect(texts.append)
    open_library(window, tiny_library)
    qtbot.waitUntil(lambda: window.search_time.text().startswith("Search ready"), timeout=60_000)
    assert texts[0].startswith("Preparing search: loading model") and texts[-1].startswith("Search ready")
    session = window.state.session
    model = session.active_model()
    bits = max(model["bits"])
    loaded = session.searcher._loaded
    assert {f"m{model['id']}-image-{bits}", f"m{model['id']}-text-{bits}"} <= set(loaded)
    count = sum(session.library.count_codes(model["id"], m, bits) for m in ("image", "text"))
    assert f"{count:,} codes" in texts[-1]
    encoder = session.encoders.get(model)  # already there: the search below reuses it
    before = dict(loaded)
    session.search(SearchQuery(text="Heart size is enlarged.", k=3))
    assert session.encoders.get(model) is encoder and all(session.searcher._loaded[k] is v for k, v in before.items())


def test_warm_up_without_a_model_does_nothing(tmp_path: Path) -> None:
    from medhash_app.core.session import MedHashSession

    with MedHashSession(tmp_path / "empty", create=True, device="cpu") as session:
        assert session.warm_up() == 0 and not session.searcher._loaded


def test_a_search_again_reuses_the_viewers_decoded_image(qtbot, window, open_library, tiny_library: Path) -> None:
    from medhash_app.core.library import Library

    with Library.open(tiny_library, read_only=True) as lib:
        path = Path(next(c for c in lib.iter_cases() if c["domain"] == "chest")["source_path"])
    open_library(window, tiny_library)
    panel = window.search_tab.query
    with qtbot.waitSignal(panel.imageLoaded, timeout=60_000):
        panel.load_file(path)
    query = window.search_tab.build_query()
    assert query.image_path == path and query.image is panel.image and panel.image is not None
