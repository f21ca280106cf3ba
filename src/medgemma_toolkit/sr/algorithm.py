"""Who wrote the SR: the model and the toolkit, as TID 4019 Algorithm Identification and a device observer.

A reader of the SR in a viewer must be able to tell which model, which weights and which prompt produced a finding;
these are the fields the standard gives for it (PS3.16 TID 4019, TID 1004).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..provenance import toolkit_version

if TYPE_CHECKING:
    from ..api import MedGemma

MANUFACTURER = "medgemma-toolkit"
# A UID root for the device observer: derived from the model identity under the UUID-derived root (2.25), so the
# same model on any machine is the same device.
_UUID_ROOT = "2.25."


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model (name, variant, weights fingerprint), the prompt preset with its version, the toolkit version."""

    model: str
    variant: str = ""
    weights: str = ""  # a hub revision, or "sha256:" of the checkpoint's config and weight-file sizes
    preset: str = ""  # "name@version"
    toolkit: str = ""

    @property
    def version(self) -> str:
        return self.weights or "unknown"

    def parameters(self) -> list[str]:
        """TID 4019 Algorithm Parameters: one "key=value" text each."""
        out = [f"variant={self.variant}"] if self.variant else []
        if self.preset:
            out.append(f"preset={self.preset}")
        out.append(f"toolkit={self.toolkit or toolkit_version()}")
        return out

    def device_uid(self) -> str:
        digest = hashlib.sha256(f"{self.model}|{self.weights}".encode()).hexdigest()
        return _UUID_ROOT + str(int(digest[:30], 16))

    def template(self) -> Any:
        """The TID 4019 content items."""
        import highdicom as hd

        return hd.sr.AlgorithmIdentification(
            name=self.model[:64] or "MedGemma",
            version=self.version[:64],
            parameters=self.parameters(),
            manufacturer=MANUFACTURER,
        )

    def observer(self) -> Any:
        """The observation context: a device observer (TID 1004) standing for the model."""
        import highdicom as hd
        from pydicom.sr.codedict import codes

        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=self.device_uid(),
            name=self.model[:64] or "MedGemma",
            manufacturer_name=MANUFACTURER,
            model_name=(self.variant or self.model)[:64],
        )
        return hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        )


def weights_fingerprint(path: str | Path) -> str:
    """A cheap identity of a checkpoint: the hub revision in its path, else a hash of config.json and the names and
    sizes of its weight files (hashing gigabytes of weights per report would cost minutes)."""
    p = Path(path)
    m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", str(p))
    if m:
        return m.group(1)
    h = hashlib.sha256()
    if p.is_file():
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    elif p.is_dir():
        cfg = p / "config.json"
        if cfg.is_file():
            h.update(cfg.read_bytes())
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.gguf")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    else:
        return ""
    return "sha256:" + h.hexdigest()[:16]


def algorithm_of(mg: MedGemma, preset: str | None = None) -> AlgorithmInfo:
    """What identifies `mg`'s answers: its name, variant, weights and preset (`preset` as "name@version")."""
    info = mg.backend.info
    variant = ""
    if mg.resolved is not None and mg.resolved.variant is not None:
        variant = mg.resolved.variant.name
    if preset is None:
        preset = f"{mg.preset.name}@{mg.preset.version}"
    return AlgorithmInfo(
        model=info.name,
        variant=variant,
        weights=weights_fingerprint(info.path) if info.path else "",
        preset=preset,
        toolkit=toolkit_version(),
    )
