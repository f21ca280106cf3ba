"""Regenerate src/medgemma_toolkit/deid/iod_type1.json: the Type 1 attributes every object of an IOD must hold.

    python scripts/gen_deid_type1.py --modules DIR

--modules: highdicom's `_standard/` folder (PyPI highdicom 0.28.2: module_attribute_map.json, iod_module_map.json),
           PS3.3's module tables as highdicom generates them from the standard.

Only the top level of mandatory (M) modules counts: an attribute of a user-optional or conditional module, a 1C,
or one inside a sequence is not required of every file. `deid` refuses an input lacking any of them: a file cut at
an element boundary parses, and its missing Type 1 attributes are what shows it is incomplete.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src/medgemma_toolkit/deid/iod_type1.json"
# highdicom lists the SR Document Content module's content-item macros (TEXT, NUM, SCOORD, TCOORD... value
# attributes) at its top level; only the root item's ValueType is required there, the rest per value type.
ONLY = {"sr-document-content": {"ValueType"}}


def main() -> None:
    from pydicom.datadict import tag_for_keyword

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", type=Path, required=True)
    p.add_argument("--source-note", default="highdicom 0.28.2 (PyPI) _standard/*.json")
    a = p.parse_args()
    mods = json.loads((a.modules / "module_attribute_map.json").read_text())
    iods = json.loads((a.modules / "iod_module_map.json").read_text())
    out: dict[str, list[str]] = {}
    for iod, modules in sorted(iods.items()):
        tags: set[str] = set()
        for m in modules:
            if m["usage"] != "M":
                continue
            for at in mods.get(m["key"], []):
                tag = tag_for_keyword(at["keyword"])
                if m["key"] in ONLY and at["keyword"] not in ONLY[m["key"]]:
                    continue
                if at["type"] == "1" and not at["path"] and tag is not None:
                    tags.add(f"{tag:08X}")
        out[iod] = sorted(tags)
    OUT.write_text(json.dumps({"source": a.source_note, "type1": out}, indent=0) + "\n")


if __name__ == "__main__":
    main()
