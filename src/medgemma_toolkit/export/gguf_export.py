"""`medgemma export gguf`: a MedGemma(-architecture) checkpoint -> text GGUF + mmproj GGUF + Ollama Modelfile.

Community conversions often drop the vision tower (ollama#10970); writing the projector as its own `mmproj` GGUF,
as llama.cpp does for Gemma 3, keeps image input working in llama.cpp, llama-cpp-python and Ollama.
The conversion itself is llama.cpp's (see `llama_source`), run on a staged copy fixed up by `prepare`.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..backends.llamacpp_logging import route_llama_logs
from ..errors import BackendUnavailable, BadInput, MedGemmaError, ModelNotFound
from ..models.resolve import resolve_model
from ..provenance import toolkit_version
from .llama_source import LLAMA_CPP_PYTHON_VERSION, converter_script
from .modelfile import write_modelfile
from .prepare import read_config, stage_checkpoint

OutType = Literal["f32", "f16", "bf16", "q8_0", "q4_k_m"]
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
MmprojType = Literal["f32", "f16", "bf16", "q8_0"]
MMPROJ_TYPES: tuple[MmprojType, ...] = ("f32", "f16", "bf16", "q8_0")
# The projector's default weight type, chosen by measurement (benchmarks/mmproj_tower.py, docs/guides/llamacpp.md):
# libmtmd's SigLIP tower is most of an image question's first token on a CPU, and its speed follows the weight type.
DEFAULT_MMPROJ_TYPE: MmprojType = "bf16"
# Post-conversion quantisation through llama.cpp's own quantizer (llama_model_quantize).
LLAMA_QUANT_TYPES = {"q4_k_m": 15}  # LLAMA_FTYPE_MOSTLY_Q4_K_M


class ConversionFailed(MedGemmaError):
    """llama.cpp's converter or quantizer rejected the checkpoint."""

    exit_code = 1
    http_status = 500
    code = "conversion_failed"


@dataclass
class GGUFExport:
    model: Path
    mmproj: Path | None
    modelfile: Path
    outtype: str
    fixes: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def export_gguf(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    outtype: OutType = "f16",
    mmproj_outtype: MmprojType = DEFAULT_MMPROJ_TYPE,
    llama_cpp_source: str | Path | None = None,
    vision: bool = True,
) -> GGUFExport:
    """Convert `checkpoint` (a directory with config.json + safetensors) into GGUF files in `out_dir`.

    Example: export_gguf("runs/merged", "gguf/") -> gguf/merged-f16.gguf, gguf/mmproj-merged-bf16.gguf, gguf/Modelfile
    """
    t0 = time.perf_counter()
    src = Path(checkpoint).expanduser()
    if not src.is_dir():
        src = _resolve(str(checkpoint))
    # Absolute paths: the converter runs in its own folder (cwd), where a relative `-o gguf/` would point elsewhere.
    src = src.resolve()
    if outtype not in (*CONVERTER_TYPES, *LLAMA_QUANT_TYPES):
        raise BadInput(f"--outtype must be one of {', '.join((*CONVERTER_TYPES, *LLAMA_QUANT_TYPES))}; got {outtype!r}")
    _check_mmproj_type(mmproj_outtype)
    cfg = read_config(src)
    multimodal = cfg.get("vision_config") is not None
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = name or src.resolve().name
    script = converter_script(llama_cpp_source)
    text_path = out / f"{stem}-{outtype}.gguf"
    mmproj_path = out / f"mmproj-{stem}-{mmproj_outtype}.gguf" if (multimodal and vision) else None
    with tempfile.TemporaryDirectory(prefix="medgemma-gguf-", dir=out) as tmp:
        staging = Path(tmp) / stem
        fixes = stage_checkpoint(src, staging)
        convert_type = "f16" if outtype in LLAMA_QUANT_TYPES else outtype
        convert_out = Path(tmp) / f"{stem}-{convert_type}.gguf" if outtype in LLAMA_QUANT_TYPES else text_path
        _run_converter(script, staging, convert_out, convert_type, mmproj=False)
        if outtype in LLAMA_QUANT_TYPES:
            quantize(convert_out, text_path, outtype)
        if mmproj_path is not None:
            _run_converter(script, staging, mmproj_path, mmproj_outtype, mmproj=True)
    modelfile = write_modelfile(out, text_path, mmproj_path)
    result = GGUFExport(text_path, mmproj_path, modelfile, outtype, fixes, round(time.perf_counter() - t0, 2))
    provenance = {
        **result.to_dict(),
        "source": str(src),
        "converter": f"llama.cpp convert_hf_to_gguf.py from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist",
        "toolkit": toolkit_version(),
    }
    (out / "export.json").write_text(json.dumps(provenance, indent=2))
    return result


def export_mmproj(
    checkpoint: str | Path,
    outfile: str | Path,
    outtype: MmprojType = DEFAULT_MMPROJ_TYPE,
    *,
    llama_cpp_source: str | Path | None = None,
) -> Path:
    """Only the vision projector (SigLIP tower + Gemma 3 projector) of `checkpoint` as one mmproj GGUF.

    For re-exporting the projector in another weight type without converting the text model again.
    Example: export_mmproj("runs/merged", "gguf/mmproj-merged-q8_0.gguf", "q8_0")
    """
    _check_mmproj_type(outtype)
    src = Path(checkpoint).expanduser().resolve()
    if read_config(src).get("vision_config") is None:
        raise BadInput(f"{checkpoint}: a text-only checkpoint has no vision projector to export")
    out = Path(outfile).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    script = converter_script(llama_cpp_source)
    with tempfile.TemporaryDirectory(prefix="medgemma-mmproj-", dir=out.parent) as tmp:
        staging = Path(tmp) / src.name
        stage_checkpoint(src, staging)
        _run_converter(script, staging, out, outtype, mmproj=True)
    return out


def _check_mmproj_type(outtype: str) -> None:
    if outtype not in MMPROJ_TYPES:
        raise BadInput(f"--mmproj-outtype must be one of {', '.join(MMPROJ_TYPES)}; got {outtype!r}")


def _resolve(spec: str) -> Path:
    """A variant or registered name (e.g. medgemma-4b-it in the HF cache) -> its checkpoint folder."""
    try:
        r = resolve_model(spec)
    except (BadInput, ModelNotFound):
        raise BadInput(f"{spec}: not a checkpoint directory (or a model name found on this machine)") from None
    if r.format != "hf" or r.is_demo:
        raise BadInput(f"{spec}: already a GGUF file; export takes a Hugging Face checkpoint folder")
    return r.path


def _run_converter(script: Path, staging: Path, outfile: Path, outtype: str, mmproj: bool) -> None:
    cmd = [sys.executable, str(script), str(staging), "--outfile", str(outfile), "--outtype", outtype]
    if mmproj:
        cmd.append("--mmproj")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(script.parent))
    if proc.returncode != 0 or not outfile.is_file():
        last = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        # The converter's last line names the failing tensor or key; it never echoes weight values.
        hint = last[-1][:300] if last else f"exit code {proc.returncode}"
        raise ConversionFailed(f"llama.cpp converter failed ({'mmproj' if mmproj else 'text'}): {hint}")


def quantize(src: Path, dst: Path, outtype: str) -> None:
    """Quantise a GGUF with llama.cpp's quantizer (needs llama-cpp-python, the `llamacpp` extra)."""
    try:
        import llama_cpp
    except ImportError:
        raise BackendUnavailable(
            f"--outtype {outtype} needs llama-cpp-python (pip install 'medgemma-toolkit[llamacpp]'); or export f16/q8_0"
        ) from None
    route_llama_logs()  # its progress lines are not for users
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_QUANT_TYPES[outtype]
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ConversionFailed(f"llama.cpp quantizer failed for {outtype} (code {rc})")
