"""Document formats and sources: HTML, PDF, quarantine, S3 glob matching, metadata in Milvus."""

import numpy as np
import pytest

from modelchain.components.chunk.logic import (
    chunk_documents,
    document_format,
    html_to_markdown,
    pdf_pages,
)
from modelchain.components.discover.logic import _glob, _glob_regex, discover
from modelchain.components.upsert.logic import upsert_chunks
from modelchain.core.embedder import TokenCounter, default_model_path
from modelchain.core.vectorstore import MilvusLiteStore
from tests.rag_support import HTML_PAGE, MIXED_CORPUS, make_pdf, write_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return TokenCounter(f"{default_model_path()}/tokenizer.json")


def test_formats_by_name():
    assert [document_format(n) for n in ["a.md", "b.MARKDOWN", "c.html", "d.htm", "e.pdf", "f.txt", "g.rst"]] == [
        "markdown", "markdown", "html", "html", "pdf", "text", "text"
    ]


def test_html_keeps_headings_meta_and_text_and_drops_scripts():
    metadata, text = html_to_markdown(HTML_PAGE)
    assert metadata == {"title": "Kitchen guide", "description": "Where things are in the kitchen", "lang": "en"}
    assert text.startswith("# Kitchen\n\nThe kettle is on the left of the stove.")
    assert "## Fridge" in text and "- Eggs in the door" in text
    assert "script text" not in text and "color: red" not in text and "/stove" not in text


def test_html_chunks_get_heading_paths(tmp_path, tokenizer):
    (tmp_path / "k.html").write_bytes(HTML_PAGE)
    chunks, quarantined = chunk_documents(discover(str(tmp_path), ["*.html"], progress=False), tokenizer)
    assert quarantined == []
    assert [c["heading_path"] for c in chunks] == ["Kitchen", "Kitchen > Fridge", "Kitchen > Pantry"]
    assert {c["format"] for c in chunks} == {"html"}
    assert chunks[0]["metadata"]["title"] == "Kitchen guide"


def test_html_in_another_encoding_is_decoded():
    page = "<html><head><meta charset='iso-8859-1'></head><body><h1>Café</h1><p>naïve</p></body></html>"
    _, text = html_to_markdown(page.encode("latin-1"))
    assert "# Café" in text and "naïve" in text


def test_pdf_pages_metadata_and_chunks(tmp_path, tokenizer):
    metadata, pages = pdf_pages(MIXED_CORPUS["manual.pdf"])
    assert metadata == {"title": "Boiler manual", "author": "Heating Ltd", "pages": 2}
    assert [h for h, _ in pages] == ["page 1", "page 2"]
    assert "1.5 bar" in pages[0][1] and "reset button" in pages[1][1]
    (tmp_path / "m.pdf").write_bytes(MIXED_CORPUS["manual.pdf"])
    chunks, _ = chunk_documents(discover(str(tmp_path), ["*.pdf"], progress=False), tokenizer)
    assert [(c["heading_path"], c["format"]) for c in chunks] == [("page 1", "pdf"), ("page 2", "pdf")]


def test_unreadable_files_are_quarantined_and_the_rest_goes_on(tmp_path, tokenizer):
    files = {
        **MIXED_CORPUS,
        "scanned.pdf": make_pdf([[]]),
        "binary.html": b"<html>\x00\x01\x02</html>",
    }
    write_corpus(tmp_path, files)
    docs = discover(str(tmp_path), ["**/*"], progress=False)
    chunks, quarantined = chunk_documents(docs, tokenizer)
    reasons = {q["source"]: q["reason"] for q in quarantined}
    assert set(reasons) == {"broken.pdf", "latin1.md", "scanned.pdf", "binary.html"}
    assert reasons["broken.pdf"].startswith("not a readable PDF")
    assert "not UTF-8" in reasons["latin1.md"]
    assert "no extractable text" in reasons["scanned.pdf"]
    assert "NUL" in reasons["binary.html"]
    assert {c["source"] for c in chunks} == {"kitchen.md", "garden.html", "garage/bike.txt", "manual.pdf"}
    kitchen = [c for c in chunks if c["source"] == "kitchen.md"]
    assert kitchen[0]["metadata"] == {"title": "Kitchen"} and kitchen[0]["uri"] == str(tmp_path / "kitchen.md")


def test_reader_needs_a_path_or_an_s3_uri(tokenizer):
    _, quarantined = chunk_documents([{"source": "x.md", "uri": "ftp://host/x.md"}], tokenizer)
    assert quarantined[0]["source"] == "x.md" and "not an s3:// URI" in quarantined[0]["reason"]


GLOB_FILES = ["README.md", "a.md", "b.txt", ".hidden.md", "docs/x.md", "docs/.y.md", "docs/sub/z.md",
              ".git/h.md", "drafts/w.md", "drafts/deep/v.md", "c[1].md", "q1.md", "docs/sub/.h/i.md"]


@pytest.mark.parametrize("pattern", [
    "**/*.md", "*.md", "docs/**", "**", "drafts/**", "docs/*/*.md", "?.md", "[ab].md", "[!a].md",
    "**/sub/*.md", "docs/**/*.md", ".git/**", "**/.y.md", "c[[]1].md", "README.md", "*/README.md", "q[0-9].md",
])
def test_s3_key_globs_match_like_local_globs(tmp_path, pattern):
    for name in GLOB_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    local = sorted(p.relative_to(tmp_path).as_posix() for p in _glob(tmp_path, pattern))
    assert sorted(n for n in GLOB_FILES if _glob_regex(pattern).fullmatch(n)) == local


@pytest.mark.parametrize("pattern", ["/etc/*.md", "../*.md", "docs/../../x"])
def test_globs_outside_the_folder_are_refused(tmp_path, pattern):
    with pytest.raises(ValueError, match="relative"):
        discover(str(tmp_path), [pattern])


def test_document_metadata_is_stored_and_retrieved(tmp_path, tokenizer):
    write_corpus(tmp_path / "docs", {"kitchen.md": MIXED_CORPUS["kitchen.md"], "m.pdf": MIXED_CORPUS["manual.pdf"]})
    chunks, _ = chunk_documents(discover(str(tmp_path / "docs"), ["*"], progress=False), tokenizer)
    vectors = np.random.default_rng(0).normal(size=(len(chunks), 8)).astype(np.float32)
    with MilvusLiteStore(str(tmp_path / "m.db"), "docs", 8) as store:
        upsert_chunks(store, chunks, vectors)
        hits = store.search(vectors[:1], k=1)[0]
    assert hits[0]["metadata"] == {
        "uri": chunks[0]["uri"], "format": chunks[0]["format"], "document": chunks[0]["metadata"]
    }
