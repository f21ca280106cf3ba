"""Elements stored with VR UN: decoded before the table is applied, or removed.

A standard attribute may reach us with VR UN when a system on the way did not know it (PS3.5 6.2.2): the value
is the attribute's own encoding, and a sequence inside UN is encoded as implicit VR little endian whatever the
file's transfer syntax. Left as UN, the walk cannot see into it, so identifying values two levels deep would pass
through. Each one is decoded with the dictionary's VR (a sequence parsed as implicit VR LE items); when the tag is
unknown, its value is tried as a sequence; what cannot be decoded is removed, never passed through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian


def raw_vr(ds: Dataset, tag: int) -> str | None:
    """The VR as stored (None: implicit VR, decided by the dictionary on access), without decoding the value."""
    return ds.get_item(tag).VR


def _value_bytes(item: Any) -> bytes | None:
    value = item.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return None


def _as_sequence(data: bytes, encoding: Any) -> Any:
    """`data` read as a sequence of implicit VR LE items, every item decoded; None when it is not one."""
    from io import BytesIO

    from pydicom.filereader import read_sequence

    if not data.startswith(_ITEM):
        return None
    try:
        seq = read_sequence(BytesIO(data), True, True, len(data), encoding)
        for item in seq:  # force decoding now: a bad value must fail here, not when written
            for _ in item:
                pass
    except Exception:  # any parse failure means "not a sequence"; the caller removes the element
        return None
    return seq


def decode_un(ds: Dataset, tag: int) -> DataElement | None:
    """Replace the UN element `tag` of `ds` with its decoded form and return it; None when it cannot be decoded
    (the caller removes it)."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
    from pydicom.tag import Tag

    item = ds.get_item(tag)
    data = _value_bytes(item)
    if data is None:  # already decoded (pydicom turns undefined-length UN into a sequence on read)
        return ds[tag] if ds[tag].VR != "UN" else None
    try:
        vr: str | None = dictionary_VR(tag)
    except KeyError:
        vr = None
    if vr == "UN":  # UN is this attribute's own VR (e.g. SelectorUNValue): nothing to decode, the table decides
        return ds[tag]
    encoding = getattr(ds, "_character_set", None) or "iso8859"
    if vr is None or vr == "SQ":
        seq = _as_sequence(data, encoding)
        if seq is None:
            return None
        elem = DataElement(tag, "SQ", seq)
    else:
        vr = vr.split(" or ")[0]  # "US or SS", "OB or OW": a UN value is the little endian bytes either way
        raw = RawDataElement(Tag(tag), vr, len(data), data, 0, True, True)
        try:
            elem = convert_raw_data_element(raw, encoding=encoding, ds=ds)
        except Exception:  # a value that does not fit its VR: removed rather than passed through
            return None
        if elem.VR == "UN":
            return None
    ds[tag] = elem
    return elem
