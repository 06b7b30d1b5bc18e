"""Any folder is a corpus: the default include, verify without questions, no row lost to a
failed read, and the change report. Real model, real Milvus Lite."""

import pytest

from modelchain.components.chunk.logic import chunk_corpus, chunk_documents
from modelchain.components.discover.logic import discover, discover_corpus
from modelchain.components.embed.logic import embed_chunks
from modelchain.components.rag_changes import change_line, change_report, plan_changes
from modelchain.components.upsert.logic import apply_changes
from modelchain.components.verify.logic import verify
from modelchain.core.config import compose
from modelchain.core.corpus import SUPPORTED_INCLUDE, SUPPORTED_SUFFIXES
from modelchain.core.retriever import Retriever
from tests.unit.test_rag_ingest_logic import CORPUS, QUESTIONS, corpus, embedder, store  # noqa: F401 - fixtures


def ingest(root, store, embedder):
    """discover -> chunk -> plan (quarantined documents keep their rows) -> embed -> apply."""
    chunks, quarantined = chunk_documents(discover(str(root)), embedder.tokenizer, 64, 8, progress=False)
    plan = plan_changes(store, chunks, quarantined=[q["source"] for q in quarantined])
    result = apply_changes(store, plan, embed_chunks(plan.chunks_to_embed, embedder, progress=False))
    return chunks, quarantined, plan, result


def rows_by_source(store):
    rows = {}
    for row in store.iter_rows(("source", "doc_hash")):
        rows.setdefault(row["source"], set()).add(row["id"])
    return rows


# ------------------------------------------------------------------------------ any folder


def test_the_default_include_is_every_supported_type_at_any_depth():
    assert set(SUPPORTED_SUFFIXES) >= {".md", ".html", ".pdf", ".txt"}
    assert {pattern.removeprefix("**/*") for pattern in SUPPORTED_INCLUDE} == set(SUPPORTED_SUFFIXES)
    rag = compose("rag_ingest", ["rag.source.uri=/somewhere"]).rag
    assert list(rag.source.include) == list(SUPPORTED_INCLUDE)
    assert list(rag.verify.questions) == [] and rag.source.exclude == []
    # The demo's patterns and questions stay with the demo corpus.
    demo = compose("rag_ingest", ["rag=project_docs"]).rag
    assert list(demo.source.include) == ["README.md", "*/README.md"] and len(demo.verify.questions) == 4


def test_a_nested_folder_of_every_supported_type_is_found(tmp_path):
    root = tmp_path / "docs"
    names = ["a.md", "x/b.markdown", "x/y/c.html", "x/y/z/d.txt", "e.htm", "guide/f.mdx", "g.pdf", "h.xhtml"]
    for name in names + ["image.png", "x/data.json", ".hidden/i.md"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"text")
    rag = compose("rag_ingest", [f"rag.source.uri={root}"]).rag
    assert [d["source"] for d in discover_corpus(rag.source, progress=False)] == sorted(names)


def test_no_documents_names_the_folder_and_why(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rag = compose("rag_ingest", [f"rag.source.uri={empty}"]).rag
    with pytest.raises(ValueError) as err:
        discover_corpus(rag.source, progress=False)
    assert str(err.value) == f"no documents under {empty}: it holds no files"

    (empty / "data.json").write_text("{}")
    (empty / "logo.png").write_bytes(b"\x89PNG")
    rag = compose("rag_ingest", [f"rag.source.uri={empty}", "rag.source.include=[guides/**/*.md]"]).rag
    with pytest.raises(ValueError) as err:
        discover_corpus(rag.source, progress=False)
    message = str(err.value)
    assert message.startswith(f"no documents under {empty}: none of its 2 files (data.json, logo.png)")
    assert "rag.source.include (guides/**/*.md)" in message and "\n" not in message


def test_a_folder_of_unreadable_files_stops_at_chunk_naming_one(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "binary.md").write_bytes(b"\x7fELF\x00\x00\x01binary")
    rag = compose("rag_ingest", [f"rag.source.uri={root}", "rag.embedding.runtime=torch"]).rag
    documents = discover_corpus(rag.source, progress=False)
    with pytest.raises(ValueError) as err:
        chunk_corpus(rag, documents, progress=False)
    assert str(err.value) == (
        f"none of the 1 documents could be read or parsed, e.g. {root / 'binary.md'}: "
        "binary content: the file contains NUL bytes"
    )


# ------------------------------------------------------------------------------ verify


def test_questions_about_absent_documents_are_skipped_not_missed(corpus, store, embedder):
    chunks, _, _, _ = ingest(corpus, store, embedder)
    elsewhere = [{"question": "How do I run the test suite?", "source": "README.md"},
                 {"question": "Where are the configs?", "source": "configs/README.md"}]
    result = verify(store, Retriever(store, embedder), chunks, elsewhere + QUESTIONS, k=3, min_recall=1.0)
    assert result["passed"], result["report"]
    assert (result["n_questions"], result["n_skipped_questions"], result["recall_at_k"]) == (6, 2, 1.0)
    assert [q["skipped"] for q in result["questions"]] == [True, True] + [False] * 6
    assert "| `README.md` (not in the corpus) | skipped | - |" in result["report"]

    # Only questions about another corpus: recall is not checked, and says why.
    result = verify(store, Retriever(store, embedder), chunks, elsewhere, k=3, min_recall=1.0)
    assert result["passed"] and result["recall_at_k"] is None
    assert "| recall@3 | no question about this corpus |" in result["report"]


def test_verify_without_questions_checks_counts_keys_and_self_retrieval(corpus, store, embedder):
    chunks, _, _, _ = ingest(corpus, store, embedder)
    retriever = Retriever(store, embedder)
    result = verify(store, retriever, chunks, [], k=3, self_check_samples=8)
    assert result["passed"] and result["failures"] == [], result["report"]
    assert result["self_samples"] == 8 and result["self_recall"] == 1.0
    assert "| self-retrieval@3 (8 sampled chunks) | 1.000 |" in result["report"]

    # Two chunks with one key: one of them overwrote the other.
    twice = chunks + [{**chunks[1], "id": chunks[0]["id"]}]
    result = verify(store, retriever, twice, [], k=3, self_check_samples=8)
    assert not result["passed"] and result["duplicate_keys"] == 1 and not result["rows_match"]
    assert result["failures"] == [f"1 chunk keys occur more than once in the corpus (e.g. {chunks[0]['id']})"]
    assert "| duplicate keys | 1 | 0 | **FAIL** |" in result["report"]

    # A row gone from the collection: the counts say so.
    store.client.delete(store.collection, filter=f'id == "{chunks[0]["id"]}"')
    result = verify(store, retriever, chunks, [], k=3, self_check_samples=8)
    assert not result["passed"]
    assert result["failures"][0] == f"the collection holds {len(chunks) - 1} rows, the corpus {len(chunks)} chunks"


def test_self_retrieval_fails_when_rows_do_not_hold_their_documents_text(corpus, store, embedder):
    chunks, _, _, _ = ingest(corpus, store, embedder)
    # The corpus says one thing, the collection holds vectors of something else.
    garbled = [{**c, "text": f"zebra migration patterns in the Serengeti, part {i}"} for i, c in enumerate(chunks)]
    result = verify(store, Retriever(store, embedder), garbled, [], k=1, self_check_samples=len(chunks))
    assert not result["passed"] and result["self_recall"] < 0.8
    assert any(f.startswith("self-retrieval:") and "needs >= 0.8" in f for f in result["failures"])


# ------------------------------------------------------------------------------ no row lost to a failed read


def test_an_unreadable_document_keeps_its_rows_and_is_retried(corpus, store, embedder):
    ingest(corpus, store, embedder)
    before = rows_by_source(store)
    good = (corpus / "billing.md").read_bytes()
    (corpus / "billing.md").write_bytes(b"\x00\x01 torn write")  # unparsable this run
    (corpus / "security.md").unlink()  # really gone

    chunks, quarantined, plan, result = ingest(corpus, store, embedder)
    assert [q["source"] for q in quarantined] == ["billing.md"]
    assert plan.quarantined_sources == ["billing.md"] and plan.removed_sources == ["security.md"]
    assert plan.sources_to_delete == ["security.md"]
    after = rows_by_source(store)
    assert after["billing.md"] == before["billing.md"] and "security.md" not in after
    assert result["deleted"] == len(before["security.md"])
    check = verify(store, Retriever(store, embedder), chunks, [], k=3, kept_sources=["billing.md"])
    assert check["passed"] and check["kept_sources"] == ["billing.md"], check["report"]

    # Next run, readable again: it is read, found unchanged, and nothing is written.
    (corpus / "billing.md").write_bytes(good)
    _, quarantined, plan, result = ingest(corpus, store, embedder)
    assert quarantined == [] and "billing.md" in plan.unchanged_sources
    assert (result["inserted"], result["deleted"]) == (0, 0)
    assert rows_by_source(store) == after


def test_every_document_quarantined_deletes_nothing(corpus, store, embedder):
    ingest(corpus, store, embedder)
    before = rows_by_source(store)
    stored_sources = sorted(before)
    plan = plan_changes(store, [], quarantined=stored_sources)
    assert plan.sources_to_delete == [] and plan.quarantined_sources == stored_sources


# ------------------------------------------------------------------------------ the change report


def test_the_change_report_counts_documents_and_chunks(corpus, store, embedder):
    chunks, _, plan, result = ingest(corpus, store, embedder)
    assert (result["added_documents"], result["added_chunks"], result["deleted_chunks"]) == (6, len(chunks), 0)

    (corpus / "install.md").write_text(CORPUS["install.md"] + "\n## Upgrade\n\nRun pip install -U modelchain.\n")
    (corpus / "serving.md").unlink()
    (corpus / "new.md").write_text("# New\n\nThe release calendar.\n")
    (corpus / "billing.md").write_bytes(b"\x00broken")
    old = rows_by_source(store)
    chunks, _, plan, result = ingest(corpus, store, embedder)
    counts, markdown = change_report(plan, result["deleted"], result["total_rows"])
    new_install = sum(1 for c in chunks if c["source"] == "install.md")
    assert counts == {
        "added_documents": 1, "updated_documents": 1, "unchanged_documents": 3, "deleted_documents": 1,
        "quarantined_documents": 1, "added_chunks": 1, "updated_chunks": new_install,
        "unchanged_chunks": sum(len(old[s]) for s in ("gpu/training.md", "notes/faq.txt", "security.md", "billing.md")),
        "deleted_chunks": len(old["serving.md"]) + len(old["install.md"]), "total_chunks": store.count(),
    }
    assert {k: result[k] for k in counts} == counts
    assert "| quarantined (rows kept, retried next run) | 1 | - | `billing.md` |" in markdown
    assert "| deleted | 1 |" in markdown and "`serving.md`" in markdown
    assert change_line(counts).startswith("documents: 1 added, 1 updated, 3 unchanged, 1 deleted, 1 quarantined;")


def test_an_unreachable_milvus_is_one_line_naming_it(tmp_path):
    from modelchain.core.vectorstore import MilvusLiteStore, MilvusServerStore, MilvusUnreachable

    with pytest.raises(MilvusUnreachable) as err:
        MilvusServerStore("http://127.0.0.1:1", "docs", 4).exists()
    assert str(err.value).startswith("cannot open Milvus at http://127.0.0.1:1 (collection 'docs'): ")
    assert "\n" not in str(err.value)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(MilvusUnreachable, match=r"cannot open Milvus at .*/file/m\.db \(collection 'docs'\)"):
        MilvusLiteStore(str(tmp_path / "file" / "m.db"), "docs", 4).exists()
