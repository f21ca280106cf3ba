"""Write the sample lab report that ships with the toolkit (`medgemma extract --sample`), from invented values.

Everything on it is made up here: no patient, no laboratory, no real result. It exists so that a newcomer can run the
structured-extraction guide with no files of their own, and so that tests can check the PDF text layer
(`--pdf-text`) against values known in advance (`VALUES`). Two pages, so the page markers and the manifest's page
numbers show. Written with fpdf2 (a text layer, core Helvetica: no font file to ship); the creation date is fixed so
that the same fpdf2 writes the same bytes.

    python scripts/make_sample_lab_report.py  # rewrites src/medgemma_toolkit/extract/samples/lab_report.pdf
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "medgemma_toolkit" / "extract" / "samples" / "lab_report.pdf"

# Invented. (name, value, unit, reference range, flag): what `lab_report.schema.json` asks the model for.
VALUES: list[tuple[str, str, str, str, str]] = [
    ("Hemoglobin", "10.2", "g/dL", "12.0-16.0", "low"),
    ("Glucose (fasting)", "142", "mg/dL", "70-99", "high"),
    ("Sodium", "139", "mmol/L", "135-145", "normal"),
    ("Potassium", "5.6", "mmol/L", "3.5-5.1", "high"),
    ("Creatinine", "0.9", "mg/dL", "0.6-1.1", "normal"),
]
REPORT_DATE = "2026-01-15"
HEADER = ["SYNTHETIC SAMPLE - INVENTED VALUES, NOT A REAL PATIENT", "Example Laboratory (fictional)"]
SUBJECT = ["Subject: SAMPLE-0001 (synthetic)", f"Collected: {REPORT_DATE}", "Specimen: venous blood"]
COMMENT = [
    "Comment: hemoglobin below and glucose and potassium above the reference range.",
    "Values invented for the MedGemma toolkit's structured-extraction guide.",
]


def build(out: Path = OUT) -> Path:
    """Write the two-page report to `out` and return it."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_creation_date(dt.datetime(2026, 1, 15, tzinfo=dt.timezone.utc))
    pdf.set_title("Synthetic lab report (sample)")
    pdf.set_margins(20, 20, 20)

    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    for line in HEADER:
        pdf.cell(0, 9, line, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 11)
    for line in SUBJECT:
        pdf.cell(0, 7, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    widths = (55, 25, 25, 35, 25)
    pdf.set_font("Helvetica", "B", 11)
    for w, head in zip(widths, ("Test", "Result", "Unit", "Reference", "Flag")):
        pdf.cell(w, 8, head, border=1)
    pdf.ln()
    pdf.set_font("Helvetica", "", 11)
    for row in VALUES:
        for w, cell in zip(widths, row):
            pdf.cell(w, 8, cell, border=1)
        pdf.ln()

    pdf.add_page()
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 9, "Page 2: comments", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 11)
    for line in COMMENT:
        pdf.multi_cell(0, 7, line, new_x="LMARGIN", new_y="NEXT")

    out.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(out))
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
