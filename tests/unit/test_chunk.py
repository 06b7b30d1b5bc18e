"""Chunking with the real all-MiniLM-L6-v2 tokenizer: headings, token limits, quarantine."""

import hashlib
from pathlib import Path

import pytest

from modelchain.components.chunk.logic import chunk_documents, markdown_sections, split_front_matter
from modelchain.core.embedder import default_model_path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path())


def n_tokens(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=False, verbose=False))


def write(folder: Path, name: str, content: str | bytes) -> dict:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return {"source": name, "path": str(path)}


GUIDE = """---
title: The guide
tags: [setup, cli]
---
Welcome text before any heading.

# Install

Install with pip.

## Quick start ##

Run this:

```bash
# a shell comment, not a heading
modelchain run rag_ingest
```

## Upgrade

Upgrade with pip too.

# Usage

Use the CLI.
"""


def by_heading(chunks):
    out = {}
    for chunk in chunks:
        out.setdefault(chunk["heading_path"], []).append(chunk["text"])
    return out


def test_markdown_chunks_carry_heading_paths_and_front_matter(tmp_path, tokenizer):
    chunks, quarantined = chunk_documents([write(tmp_path, "guide.md", GUIDE)], tokenizer)
    assert quarantined == []
    sections = by_heading(chunks)
    assert list(sections) == ["", "Install", "Install > Quick start", "Install > Upgrade", "Usage"]
    quick = sections["Install > Quick start"][0]
    assert quick.startswith("## Quick start ##") and "# a shell comment, not a heading" in quick
    assert sections[""] == ["Welcome text before any heading."]
    assert all("title:" not in c["text"] for c in chunks)
    assert chunks[0]["metadata"] == {"title": "The guide", "tags": ["setup", "cli"]}
    assert [c["position"] for c in chunks] == list(range(len(chunks)))


def test_chunk_ids_hashes_and_determinism(tmp_path, tokenizer):
    doc = write(tmp_path, "guide.md", GUIDE)
    chunks, _ = chunk_documents([doc], tokenizer)
    again, _ = chunk_documents([doc], tokenizer)
    assert chunks == again
    doc_hash = hashlib.sha256(GUIDE.encode()).hexdigest()
    for c in chunks:
        content_hash = hashlib.sha256(f"{c['heading_path']}\0{c['text']}".encode()).hexdigest()
        assert c["content_hash"] == content_hash
        assert c["id"] == hashlib.sha256(f"guide.md\0{content_hash}".encode()).hexdigest()
        assert c["doc_hash"] == doc_hash


def test_editing_one_section_changes_only_its_chunk_ids(tmp_path, tokenizer):
    before, _ = chunk_documents([write(tmp_path, "a/guide.md", GUIDE)], tokenizer)
    edited = GUIDE.replace("Upgrade with pip too.", "Upgrade with uv.")
    after, _ = chunk_documents([write(tmp_path, "b/guide.md", edited)], tokenizer)
    changed = [
        (b["heading_path"], b["content_hash"] == a["content_hash"]) for b, a in zip(before, after)
    ]
    assert changed == [(h, h != "Install > Upgrade") for h, _ in changed]


def test_long_sections_are_split_within_the_token_budget(tmp_path, tokenizer):
    words = [f"word{i}" for i in range(600)]
    paragraphs = "\n\n".join(" ".join(words[i : i + 30]) + "." for i in range(0, 600, 30))
    doc = write(tmp_path, "long.md", f"# Long\n\n{paragraphs}\n")
    chunks, _ = chunk_documents([doc], tokenizer, chunk_tokens=64, overlap_tokens=16)
    assert len(chunks) > 5
    assert all(n_tokens(tokenizer, c["text"]) <= 64 for c in chunks)
    assert {c["heading_path"] for c in chunks} == {"Long"}
    joined = " ".join(c["text"] for c in chunks)
    assert all(w in joined.split() or f"{w}." in joined.split() for w in words)


def test_consecutive_chunks_of_a_paragraph_overlap(tmp_path, tokenizer):
    text = " ".join(f"w{i}" for i in range(400))
    chunks, _ = chunk_documents([write(tmp_path, "p.txt", text)], tokenizer, 40, 12)
    assert len(chunks) > 5
    for first, second in zip(chunks, chunks[1:]):
        shared = set(first["text"].split()) & set(second["text"].split())
        assert 2 <= len(shared) and first["text"].split()[-1] in shared
    no_overlap, _ = chunk_documents([write(tmp_path, "q.txt", text)], tokenizer, 40, 0)
    assert sum(len(c["text"].split()) for c in no_overlap) == 400


def test_plain_text_is_split_by_tokens_only(tmp_path, tokenizer):
    text = "# not a heading in a .txt file\n\n" + " ".join(f"plain{i}." for i in range(300))
    chunks, _ = chunk_documents([write(tmp_path, "notes.txt", text)], tokenizer, 50, 10)
    assert len(chunks) > 3
    assert {c["heading_path"] for c in chunks} == {""}
    assert chunks[0]["text"].startswith("# not a heading")
    assert all(n_tokens(tokenizer, c["text"]) <= 50 for c in chunks)


def test_undecodable_and_bad_front_matter_files_are_quarantined(tmp_path, tokenizer):
    docs = [
        write(tmp_path, "bad.md", b"# Title\n\xff\xfe broken bytes"),
        write(tmp_path, "binary.txt", b"abc\x00def"),
        write(tmp_path, "good.md", "# Fine\n\nAll good."),
        write(tmp_path, "yaml.md", "---\ntitle: [unclosed\n---\n# Body\n"),
        {"source": "gone.md", "path": str(tmp_path / "gone.md")},
    ]
    chunks, quarantined = chunk_documents(docs, tokenizer)
    assert {c["source"] for c in chunks} == {"good.md"}
    reasons = {q["source"]: q["reason"] for q in quarantined}
    assert set(reasons) == {"bad.md", "binary.txt", "yaml.md", "gone.md"}
    assert "not UTF-8" in reasons["bad.md"] and "0xff at offset 8" in reasons["bad.md"]
    assert "NUL" in reasons["binary.txt"]
    assert "invalid YAML front matter" in reasons["yaml.md"]
    assert "cannot read" in reasons["gone.md"]


def test_repeated_text_under_one_heading_is_kept_once(tmp_path, tokenizer):
    text = "# A\n\nSame paragraph.\n\n---\n\nSame paragraph.\n\n# B\n\nSame paragraph.\n"
    chunks, _ = chunk_documents([write(tmp_path, "d.md", text)], tokenizer, 4, 0)
    pairs = [(c["heading_path"], c["text"]) for c in chunks]
    assert pairs == [("A", "# A"), ("A", "Same paragraph."), ("B", "# B"), ("B", "Same paragraph.")]
    assert len({c["id"] for c in chunks}) == len(chunks)
    assert [c["position"] for c in chunks] == list(range(len(chunks)))


def test_text_after_an_unclosed_code_fence_is_kept():
    sections = markdown_sections("# A\n\nintro\n\n```python\ndef f():\n    return 1\n")
    assert sections and "return 1" in sections[-1][1]


def test_front_matter_rules():
    assert split_front_matter("---\na: 1\n---\nbody") == ({"a": 1}, "body")
    assert split_front_matter("---\n---\nbody") == ({}, "body")
    # A leading horizontal rule around plain text is not front matter.
    assert split_front_matter("---\njust text\n---\nbody") == ({}, "---\njust text\n---\nbody")
    meta, _ = split_front_matter("---\ndate: 2024-05-01\n---\n")
    assert meta == {"date": "2024-05-01"}


@pytest.mark.parametrize("tokens, overlap", [(0, 0), (64, 64), (64, -1)])
def test_bad_sizes_are_refused(tokenizer, tokens, overlap):
    with pytest.raises(ValueError):
        chunk_documents([], tokenizer, tokens, overlap)


def test_a_document_changed_after_discover_is_quarantined_not_chunked(tmp_path, tokenizer):
    # The chunk step is cached on the discover manifest: the chunks it makes must be those of
    # the bytes the manifest hashed, so a document edited in between is refused, with the reason.
    from modelchain.components.discover.logic import discover

    (tmp_path / "same.md").write_text("# Same\n\nUnchanged text.\n")
    (tmp_path / "edited.md").write_text("# Edited\n\nThe first version.\n")
    manifest = discover(str(tmp_path), progress=False)
    listed = {record["source"]: record["sha256"] for record in manifest}
    (tmp_path / "edited.md").write_text("# Edited\n\nA second version, written after discover.\n")
    chunks, quarantined = chunk_documents(manifest, tokenizer)
    assert quarantined == [{
        "source": "edited.md",
        "reason": f"changed since discover: its bytes no longer match the manifest's sha256 {listed['edited.md'][:12]}...",
    }]
    assert {c["source"] for c in chunks} == {"same.md"}
    assert chunks[0]["doc_hash"] == listed["same.md"]
    # A record without a hash (written by hand, or by an older discover) is read as it is.
    chunks, quarantined = chunk_documents([{"source": "edited.md", "path": str(tmp_path / "edited.md")}], tokenizer)
    assert quarantined == [] and "second version" in chunks[0]["text"]
