"""Parse + chunk: documents -> heading-aware, token-sized chunks with stable content-hash ids.

Markdown is first cut into sections at its headings (each chunk remembers its heading
path, e.g. "Install > Quick start"), then every section is split to at most
``chunk_tokens`` tokens of the embedding model's tokenizer, with ``overlap_tokens`` of
overlap, preferring paragraph, then line, then word boundaries. Plain text is split by
tokens only. A file that cannot be read as UTF-8 text is quarantined, not fatal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from modelchain.core.io import sha256_bytes, sha256_text

MARKDOWN_SUFFIXES = (".md", ".markdown")
HEADING_SEPARATOR = " > "
_HEADING_KEYS = [("#" * level, f"h{level}") for level in range(1, 7)]
_FRONT_MATTER = re.compile(
    r"\A---[ \t]*\n(.*?)^(?:---|\.\.\.)[ \t]*$\n?", re.DOTALL | re.MULTILINE
)
_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)


def chunk_documents(
    documents: Iterable[dict],
    tokenizer: Any,
    chunk_tokens: int = 256,
    overlap_tokens: int = 32,
) -> tuple[list[dict], list[dict]]:
    """Chunk the files named by discover records (``source``, ``path``).

    Returns ``(chunks, quarantined)``. Each chunk: ``id`` (sha256 of source, NUL, content
    hash), ``source``, ``heading_path``, ``position`` (0.. within its document), ``text``,
    ``content_hash`` (sha256 of heading path, NUL, text), ``doc_hash`` (sha256 of the file's
    bytes) and ``metadata`` (the YAML front matter, if any). Each quarantined file:
    ``{source, reason}``. A chunk repeated verbatim under the same heading of a document
    is kept once: it would add nothing to retrieval and would collide on its id.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError(
            f"overlap_tokens must be in [0, chunk_tokens), got {overlap_tokens} with "
            f"chunk_tokens={chunk_tokens}"
        )
    markdown_splitter, text_splitter = _token_splitters(tokenizer, chunk_tokens, overlap_tokens)

    chunks: list[dict] = []
    quarantined: list[dict] = []
    for doc in documents:
        source = doc["source"]
        try:
            raw = Path(doc["path"]).read_bytes()
        except OSError as exc:
            quarantined.append({"source": source, "reason": f"cannot read file: {exc}"})
            continue
        try:
            text = _decode(raw)
            is_markdown = source.lower().endswith(MARKDOWN_SUFFIXES)
            metadata, text = split_front_matter(text) if is_markdown else ({}, text)
        except ValueError as exc:
            quarantined.append({"source": source, "reason": str(exc)})
            continue

        doc_hash = sha256_bytes(raw)
        sections = markdown_sections(text) if is_markdown else [("", text)]
        splitter = markdown_splitter if is_markdown else text_splitter
        seen: set[str] = set()
        position = -1
        for heading_path, section in sections:
            for piece in splitter.split_text(section):
                content_hash = sha256_text(f"{heading_path}\0{piece}")
                if not piece.strip() or content_hash in seen:
                    continue
                seen.add(content_hash)
                position += 1
                chunks.append(
                    {
                        "id": sha256_text(f"{source}\0{content_hash}"),
                        "source": source,
                        "heading_path": heading_path,
                        "position": position,
                        "text": piece,
                        "content_hash": content_hash,
                        "doc_hash": doc_hash,
                        "metadata": metadata,
                    }
                )
    return chunks, quarantined


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


def _token_splitters(tokenizer: Any, chunk_tokens: int, overlap_tokens: int) -> tuple[Any, Any]:
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
    return markdown, make()
