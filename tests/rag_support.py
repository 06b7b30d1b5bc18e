"""Helpers for the RAG tests: small PDFs written by hand, and a corpus of every format."""

from __future__ import annotations

from pathlib import Path


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def make_pdf(pages: list[list[str]], info: dict[str, str] | None = None) -> bytes:
    """A valid PDF with one page per item of ``pages`` (its lines, in Helvetica) and an Info dict."""
    objects: list[str] = []  # object i + 1
    page_ids = [3 + 2 * i for i in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    objects.append("<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {len(pages)} >>")
    for page_id, lines in zip(page_ids, pages):
        body = "BT /F1 12 Tf 14 TL 72 720 Td " + " T* ".join(f"{_pdf_string(line)} Tj" for line in lines) + " ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {page_id + 1} 0 R >>"
        )
        objects.append(f"<< /Length {len(body)} >>\nstream\n{body}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info_ref = ""
    if info:
        objects.append("<< " + " ".join(f"/{k} {_pdf_string(v)}" for k, v in info.items()) + " >>")
        info_ref = f" /Info {len(objects)} 0 R"
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info_ref} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


HTML_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kitchen guide</title>
<meta name="description" content="Where things are in the kitchen">
<style>body { color: red }</style><script>var hidden = "script text";</script></head>
<body>
<h1>Kitchen</h1><p>The kettle is on the left of the <a href="/stove">stove</a>.</p>
<h2>Fridge</h2><p>Milk sits on the top shelf.</p><ul><li>Eggs in the door</li><li>Butter below</li></ul>
<h2>Pantry</h2><p>Flour is in the blue tin.</p>
</body></html>
"""

MIXED_CORPUS: dict[str, bytes] = {
    "kitchen.md": b"---\ntitle: Kitchen\n---\n# Kitchen\n\nThe kettle is on the left of the stove.\n\n"
                  b"## Fridge\n\nMilk sits on the top shelf.\n",
    "garden.html": b"<html><head><title>Garden</title></head><body><h1>Garden</h1>"
                   b"<p>Tomatoes need watering every morning in summer.</p></body></html>",
    "garage/bike.txt": b"The bicycle pump hangs on the wall behind the car.\n",
    "manual.pdf": make_pdf([["Boiler manual", "The boiler pressure should read 1.5 bar when cold."],
                            ["Resetting", "Hold the reset button for ten seconds to restart the boiler."]],
                           {"Title": "Boiler manual", "Author": "Heating Ltd"}),
    "broken.pdf": b"%PDF-1.4\nthis is not really a pdf",
    "latin1.md": "# Caf\u00e9\n\nna\u00efve\n".encode("latin-1"),
}


def write_corpus(root: Path, files: dict[str, bytes] = MIXED_CORPUS) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root
