"""`medgemma extract`: one JSON object per document (PDF, image), constrained to a schema and validated."""

from .run import DEFAULT_INSTRUCTION, Extraction, ExtractSettings, extract_documents, read_schema

__all__ = ["DEFAULT_INSTRUCTION", "ExtractSettings", "Extraction", "extract_documents", "read_schema"]
