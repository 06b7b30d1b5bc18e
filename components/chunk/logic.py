"""Parse + chunk: documents -> heading-aware, token-sized chunks with stable content-hash ids.

Markdown is first cut into sections at its headings (each chunk remembers its heading
path, e.g. "Install > Quick start"), then every section is split to at most
``chunk_tokens`` tokens of the embedding model's tokenizer, with ``overlap_tokens`` of
overlap, preferring paragraph, then line, then word boundaries. HTML is turned into
Markdown first (BeautifulSoup + markdownify), so its headings give heading paths too; PDF
text (pypdf) is split page by page, plain text by tokens only. Front matter, HTML meta
tags and PDF document info are kept as each chunk's ``metadata``. A file that cannot be
read or parsed is quarantined with the reason, and the rest goes on.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from modelchain.core.corpus import (
    HTML_SUFFIXES,
    MARKDOWN_SUFFIXES,
    PDF_SUFFIXES,
    DocumentChanged,
    DocumentReader,
)
from modelchain.core.io import sha256_bytes, sha256_text
from modelchain.core.progress import progress_bar

if TYPE_CHECKING:
    from omegaconf import DictConfig

HEADING_SEPARATOR = " > "
_HEADING_KEYS = [("#" * level, f"h{level}") for level in range(1, 7)]
_FRONT_MATTER = re.compile(
    r"\A---[ \t]*\n(.*?)^(?:---|\.\.\.)[ \t]*$\n?", re.DOTALL | re.MULTILINE
)
_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)
# HTML elements whose text is not document content.
_HTML_DROP = ["script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "head"]
_HTML_META = ("description", "author", "keywords", "og:title", "og:description", "dc.title", "dc.creator")


# Part of chunking_signature: bump it when a change here changes the chunks of a document.
CHUNKER_VERSION = "2"


def chunking_signature(tokenizer_file: str | Path, chunk_tokens: int, overlap_tokens: int) -> str:
    """What the chunks of a document depend on besides its bytes: this code, sizes, tokenizer."""
    tokenizer_hash = sha256_bytes(Path(tokenizer_file).read_bytes()) if Path(tokenizer_file).is_file() else str(tokenizer_file)
    return sha256_text(json.dumps([CHUNKER_VERSION, chunk_tokens, overlap_tokens, tokenizer_hash]))


def document_format(source: str) -> str:
    """``markdown``, ``html``, ``pdf`` or ``text``, from the file name."""
    name = source.lower()
    if name.endswith(MARKDOWN_SUFFIXES):
        return "markdown"
    if name.endswith(HTML_SUFFIXES):
        return "html"
    if name.endswith(PDF_SUFFIXES):
        return "pdf"
    return "text"


def chunk_documents(
    documents: Iterable[dict],
    tokenizer: Any,
    chunk_tokens: int = 256,
    overlap_tokens: int = 32,
    progress: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Chunk the documents named by discover records (``source`` and ``path`` or ``uri``).

    Returns ``(chunks, quarantined)``. Each chunk: ``id`` (sha256 of source, NUL, content
    hash), ``source``, ``uri``, ``format``, ``heading_path``, ``position`` (0.. within its
    document), ``text``, ``content_hash`` (sha256 of heading path, NUL, text),
    ``doc_hash`` (sha256 of the file's bytes) and ``metadata`` (front matter, HTML meta
    tags or PDF info). Each quarantined file: ``{source, reason}``: unreadable, unparsable,
    or changed since discover listed it (its bytes no longer match the record's ``sha256``
    or ``etag``, so its chunks would not be those of the manifest). A chunk repeated
    verbatim under the same heading of a document is kept once: it would add nothing to
    retrieval and would collide on its id.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError(
            f"overlap_tokens must be in [0, chunk_tokens), got {overlap_tokens} with "
            f"chunk_tokens={chunk_tokens}"
        )
    splitters = _token_splitters(tokenizer, chunk_tokens, overlap_tokens)
    documents = list(documents)
    reader = DocumentReader()
    chunks: list[dict] = []
    quarantined: list[dict] = []
    with progress_bar(len(documents), "Chunking", "doc", progress) as bar:
        for doc in documents:
            bar.update(1)
            source = doc["source"]
            try:
                raw = reader.read(doc)
            except DocumentChanged as exc:
                quarantined.append({"source": source, "reason": str(exc)})
                continue
            except OSError as exc:
                quarantined.append({"source": source, "reason": f"cannot read file: {exc}"})
                continue
            try:
                fmt, metadata, sections = parse_document(source, raw)
            except Exception as exc:  # noqa: BLE001 - a corrupt file of any kind must not stop the corpus
                reason = str(exc) if isinstance(exc, ValueError) else f"cannot parse: {type(exc).__name__}: {exc}"
                quarantined.append({"source": source, "reason": reason})
                continue
            chunks.extend(
                _chunk_sections(doc, fmt, metadata, sections, sha256_bytes(raw), splitters[fmt])
            )
    return chunks, quarantined


def _chunk_sections(
    doc: dict, fmt: str, metadata: dict, sections: Sequence[tuple[str, str]], doc_hash: str, splitter: Any
) -> list[dict]:
    source = doc["source"]
    seen: set[str] = set()
    out: list[dict] = []
    for heading_path, section in sections:
        for piece in splitter.split_text(section):
            content_hash = sha256_text(f"{heading_path}\0{piece}")
            if not piece.strip() or content_hash in seen:
                continue
            seen.add(content_hash)
            out.append(
                {
                    "id": sha256_text(f"{source}\0{content_hash}"),
                    "source": source,
                    "uri": doc.get("uri", source),
                    "format": fmt,
                    "heading_path": heading_path,
                    "position": len(out),
                    "text": piece,
                    "content_hash": content_hash,
                    "doc_hash": doc_hash,
                    "metadata": metadata,
                }
            )
    return out


def parse_document(source: str, raw: bytes) -> tuple[str, dict, list[tuple[str, str]]]:
    """``(format, metadata, [(heading_path, text)])`` of one file; ValueError if unreadable."""
    fmt = document_format(source)
    if fmt == "pdf":
        metadata, pages = pdf_pages(raw)
        return fmt, metadata, pages
    if fmt == "html":
        metadata, text = html_to_markdown(raw)
        return fmt, metadata, markdown_sections(text)
    text = _decode(raw)
    if fmt == "markdown":
        metadata, text = split_front_matter(text)
        return fmt, metadata, markdown_sections(text)
    return fmt, {}, [("", text)]


def html_to_markdown(raw: bytes) -> tuple[dict, str]:
    """``(metadata, markdown)`` of an HTML page: title and meta tags, and the body as Markdown.

    BeautifulSoup finds the encoding (BOM, ``<meta charset>``, then a guess); markdownify
    writes headings as ``#`` lines, so the Markdown splitter gives heading paths. Scripts,
    styles and other non-content elements are dropped, links and images keep their text only.
    """
    if b"\x00" in raw[:8192]:
        raise ValueError("binary content: the file contains NUL bytes")
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(raw, "html.parser")
    metadata: dict[str, Any] = {}
    if soup.title and soup.title.get_text(strip=True):
        metadata["title"] = soup.title.get_text(" ", strip=True)
    for meta in soup.find_all("meta"):
        name = (meta.get("name") or meta.get("property") or "").lower()
        if name in _HTML_META and meta.get("content"):
            metadata[name] = meta["content"]
    if soup.html and soup.html.get("lang"):
        metadata["lang"] = soup.html["lang"]
    for tag in soup(_HTML_DROP):
        tag.decompose()
    converter = MarkdownConverter(heading_style="ATX", strip=["a", "img"], bullets="-")
    text = converter.convert_soup(soup.body or soup)
    # markdownify leaves runs of blank lines where blocks were removed.
    return metadata, re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def pdf_pages(raw: bytes) -> tuple[dict, list[tuple[str, str]]]:
    """``(metadata, [("page N", text)])`` of a PDF, with pypdf; pages without text are left out."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ValueError("encrypted PDF: it needs a password")
        metadata: dict[str, Any] = {}
        for key, value in (reader.metadata or {}).items():
            if value is not None and str(value).strip():
                metadata[key.lstrip("/").lower()] = str(value)
        pages = [(f"page {i}", page.extract_text() or "") for i, page in enumerate(reader.pages, 1)]
    except PdfReadError as exc:
        raise ValueError(f"not a readable PDF: {exc}") from None
    pages = [(heading, text) for heading, text in pages if text.strip()]
    if not pages:
        raise ValueError("no extractable text in the PDF (a scanned PDF needs OCR first)")
    metadata["pages"] = len(reader.pages)
    return metadata, pages


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not UTF-8 text: cannot decode byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        ) from None
    if "\x00" in text:
        raise ValueError("binary content: the file contains NUL bytes")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_front_matter(text: str) -> tuple[dict, str]:
    """Split a leading YAML front matter block (between ``---`` lines) off Markdown text.

    Returns ``(metadata, body)``. A block that is not a YAML mapping is left in the text
    (it is more likely a horizontal rule); a block that is not valid YAML raises
    ``ValueError`` naming the line.
    """
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    import yaml

    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"invalid YAML front matter{where}: {problem}") from None
    if data is None:
        return {}, text[match.end() :]
    if not isinstance(data, dict):
        return {}, text
    # Dates and other YAML types become strings, so chunks stay JSON-serialisable.
    return json.loads(json.dumps(data, default=str)), text[match.end() :]


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """``[(heading_path, section_text)]`` in document order; headings stay in the text.

    Heading detection (ATX headings outside code fences) comes from langchain's
    ExperimentalMarkdownSyntaxTextSplitter, which keeps the original whitespace. It
    returns code blocks and horizontal-rule-separated parts as pieces of their own; the
    pieces under one heading are joined back, so the token splitter sees whole sections.
    """
    from langchain_text_splitters import ExperimentalMarkdownSyntaxTextSplitter

    # The splitter drops everything after a code fence that is never closed: close it.
    if len(_FENCE.findall(text)) % 2:
        text = text + ("" if text.endswith("\n") else "\n") + "```\n"
    splitter = ExperimentalMarkdownSyntaxTextSplitter(_HEADING_KEYS, strip_headers=False)
    pieces = splitter.split_text(text)
    sections: list[tuple[str, str]] = []
    for piece in pieces:
        heading_path = HEADING_SEPARATOR.join(
            _clean_heading(piece.metadata[key]) for _, key in _HEADING_KEYS if key in piece.metadata
        )
        if sections and sections[-1][0] == heading_path:
            sections[-1] = (heading_path, sections[-1][1] + piece.page_content)
        else:
            sections.append((heading_path, piece.page_content))
    return sections


def _clean_heading(heading: str) -> str:
    # "## Title ##" is a valid ATX heading; the closing hashes are not part of the title.
    return re.sub(r"\s+#+\s*$", "", heading).strip()


def _token_splitters(tokenizer: Any, chunk_tokens: int, overlap_tokens: int) -> dict[str, Any]:
    """The token-sized splitter of each format: Markdown separators for Markdown and HTML."""
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    # What from_huggingface_tokenizer measures, minus the tokenizer's warning that a whole
    # section is longer than the model's input: true, but sections are what gets split.
    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def make(**kwargs: Any) -> Any:
        return RecursiveCharacterTextSplitter(
            length_function=count_tokens,
            chunk_size=chunk_tokens,
            chunk_overlap=overlap_tokens,
            **kwargs,
        )

    markdown = make(
        separators=RecursiveCharacterTextSplitter.get_separators_for_language(Language.MARKDOWN),
        is_separator_regex=True,
    )
    text = make()
    return {
        "markdown": _WholeIfItFits(markdown, count_tokens, chunk_tokens),
        "html": _WholeIfItFits(markdown, count_tokens, chunk_tokens),
        "pdf": _WholeIfItFits(text, count_tokens, chunk_tokens),
        "text": _WholeIfItFits(text, count_tokens, chunk_tokens),
    }


class _WholeIfItFits:
    """A section that fits the budget is one chunk, as the splitter would make it.

    The recursive splitter measures every candidate piece and merge; most sections of
    real documents are shorter than a chunk, and one count tells so (chunking is then
    several times faster, which is most of a re-ingest).
    """

    def __init__(self, splitter: Any, count_tokens: Any, chunk_tokens: int) -> None:
        self.splitter, self.count_tokens, self.chunk_tokens = splitter, count_tokens, chunk_tokens

    def split_text(self, text: str) -> list[str]:
        stripped = text.strip()
        if not stripped:
            return []
        if self.count_tokens(stripped) <= self.chunk_tokens:
            return [stripped]
        return self.splitter.split_text(text)


def chunk_corpus(rag: "DictConfig", documents: Iterable[dict], progress: bool = True) -> tuple[list[dict], list[dict]]:
    """``chunk_documents`` with the sizes of a typed ``rag.chunk`` and the tokenizer of ``rag.embedding``.

    ValueError when not one document could be read (a folder of binaries, an S3 endpoint
    refusing every read): the run stops here, before anything is planned or deleted.
    """
    from modelchain.components.rag_settings import open_embedder

    documents = list(documents)
    chunks, quarantined = chunk_documents(documents, open_embedder(rag).tokenizer, rag.chunk.tokens, rag.chunk.overlap, progress)
    if documents and len(quarantined) == len(documents):
        first = quarantined[0]
        raise ValueError(
            f"none of the {len(documents)} documents could be read or parsed, e.g. "
            f"{documents[0].get('uri', first['source'])}: {first['reason']}"
        )
    return chunks, quarantined
