"""PDF documents (lab reports, referral letters) as images: one model-ready square per page, in page order.

Pages are rendered with pypdfium2 (PDFium, the renderer of Chromium) straight at the model's input size, so a page
costs what any image costs, whatever its declared size. The page count is capped and every page is charged to the
request's decode budget before it renders, so a large document is refused up front rather than half-read. Each
page's manifest entry names its page number (1-based).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.messages import ImagePart, Part, TextPart
from ..errors import BadInput, ImageTooLarge
from .inputs import read_file_bytes
from .options import ImageOptions, padded
from .square import to_model_image

MAX_PAGES = 16  # pages read from one document; more is refused (send the pages that matter)
MAX_ASPECT = 20.0  # a page 20x longer than wide renders as a sliver: refused rather than sent as noise
PDF_MAGIC = b"%PDF-"


def is_pdf(source: str) -> bool:
    """A local file that starts like a PDF (the suffix alone is not trusted, and is not needed)."""
    p = Path(source)
    try:
        if not p.is_file():
            return False
        with p.open("rb") as f:
            return f.read(len(PDF_MAGIC)) == PDF_MAGIC
    except (OSError, ValueError):
        return False


def _open(data: bytes, name: str) -> tuple[Any, int]:
    """The PDF document and its page count, refused in one line when unreadable, empty or over `MAX_PAGES`; the
    caller closes the document."""
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        raise BadInput(f"{name}: cannot read the PDF ({str(e).splitlines()[0][:120]})") from None
    n = len(doc)
    if n == 0 or n > MAX_PAGES:
        doc.close()
        if n == 0:
            raise BadInput(f"{name}: the PDF has no pages")
        raise BadInput(f"{name}: the PDF has {n} pages; at most {MAX_PAGES} are read (split the document)")
    return doc, n


def pdf_pages(data: bytes, name: str, options: ImageOptions, size: int) -> list[Part]:
    """Each page of the PDF in `data` as an `ImagePart` (page number in its manifest info), in order."""
    doc, n = _open(data, name)
    try:
        return [_page(doc[i], i + 1, name, options, size) for i in range(n)]
    finally:
        doc.close()


def _page(page: Any, number: int, name: str, options: ImageOptions, size: int) -> ImagePart:
    import pypdfium2 as pdfium

    w, h = page.get_size()  # points (1/72 inch)
    if w <= 0 or h <= 0 or max(w, h) / min(w, h) > MAX_ASPECT:
        raise BadInput(f"{name}: page {number} has an unusable shape ({w:.0f} x {h:.0f} points)")
    scale = size / max(w, h)
    pixels = max(1, round(w * scale)) * max(1, round(h * scale))
    if pixels > options.max_pixels:
        raise ImageTooLarge(f"{name}: page {number} would render to {pixels:,} pixels (limit {options.max_pixels:,})")
    if options.budget is not None:
        options.budget.charge(pixels, f"{name} page {number}")
    try:
        image = page.render(scale=scale).to_pil().convert("RGB")
    except pdfium.PdfiumError:
        raise BadInput(f"{name}: cannot render page {number}") from None
    finally:
        page.close()
    info = {"source": name, "instance_number": None, "sop_instance_uid": None, "patch": None, "page": number}
    return ImagePart(to_model_image(image, size, padded(options)), label=f"page {number}", info=info)


def pdf_text(data: bytes, name: str, options: ImageOptions) -> list[Part]:
    """The PDF's text layer, one `TextPart` per page opening with its page marker ("[page 1 of 2]"), for models
    without a vision tower, or for born-digital reports whose text is exact where a 896-px page image is not.

    pypdfium2's text API (PDFium's own extraction, the text in reading order as the PDF stores it). The characters
    are counted before any is kept: over `options.max_text_chars` (and the request budget's, where it has one) the
    document is refused rather than cut, since a cut lab report would be extracted as if it were whole. A page with
    no text layer (a scan) contributes its marker and "(no text layer)", so the model knows a page is missing."""
    doc, n = _open(data, name)
    try:
        parts: list[Part] = []
        used = 0
        for i in range(n):
            page = doc[i]
            try:
                textpage = page.get_textpage()
                try:
                    count = textpage.count_chars()
                    used += max(0, count)
                    if used > options.max_text_chars:
                        raise ImageTooLarge(
                            f"{name}: the text layer is over {options.max_text_chars:,} characters by page {i + 1}"
                        )
                    if options.budget is not None:
                        options.budget.charge_text(max(0, count), f"{name} page {i + 1}")
                    text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n").strip()
                finally:
                    textpage.close()
            finally:
                page.close()
            parts.append(TextPart(f"[page {i + 1} of {n}]\n{text or '(no text layer)'}"))
        return parts
    finally:
        doc.close()


def read_pdf_source(source: str, options: ImageOptions, size: int) -> list[Part] | None:
    """`load_parts` reader for PDF files (None for anything else): page images, or with `options.pdf_text` the
    pages' text layer."""
    if not is_pdf(source):
        return None
    if options.pdf_text:
        return pdf_text(read_file_bytes(source), source, options)
    return pdf_pages(read_file_bytes(source), source, options, size)
