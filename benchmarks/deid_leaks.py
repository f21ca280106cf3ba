"""How much of Table E.1-1 survives: the conformance test's canary file through ours, dicognito, dicom-anonymizer.

The file (tests/test_deid_conformance.py `planted_ct`) holds a unique canary in every table attribute pydicom
knows, at the top level and again two sequences deep, plus private, curve, overlay and file meta data. Each tool
de-identifies it in memory; the output bytes are searched for every canary. Only counts and attribute names are
printed (the canaries are synthetic).

Run: .venv/bin/python benchmarks/deid_leaks.py   (needs dicognito==0.19.0 and dicom-anonymizer==2.1.0)
"""

from __future__ import annotations

import io
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def main() -> None:
    import pydicom
    from test_deid_conformance import leaked, planted_ct

    from medgemma_toolkit.deid import deidentify_dataset

    warnings.simplefilter("ignore")
    tools = {"ours": lambda ds: deidentify_dataset(ds)}
    try:
        from dicognito.anonymizer import Anonymizer

        tools["dicognito 0.19.0"] = lambda ds: Anonymizer().anonymize(ds)
    except ImportError:
        print("dicognito not installed")
    try:
        from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, initialize_actions

        tools["dicom-anonymizer 2.1.0 (2026c rules)"] = lambda ds: anonymize_dataset(
            ds, base_rules_gen=lambda: initialize_actions("dicomfields_2026c")
        )
    except ImportError:
        print("dicom-anonymizer not installed")
    with tempfile.TemporaryDirectory() as tmp:
        path, canaries, _ = planted_ct(Path(tmp))
        for name, fn in tools.items():
            ds = pydicom.dcmread(path)
            fn(ds)
            buf = io.BytesIO()
            ds.save_as(buf)
            left = leaked(buf.getvalue(), canaries)
            top = [w for w in left if not w.startswith("ReferencedSeriesSequence")]
            print(
                f"{name}: {len(left)} of {len(canaries.text)} canaries left "
                f"({len(top)} at the top level or in file meta, {len(left) - len(top)} nested)"
            )
            if top:
                print("   e.g.", ", ".join(top[:8]))


if __name__ == "__main__":
    main()
