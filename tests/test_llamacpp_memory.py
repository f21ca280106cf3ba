"""llama.cpp's memory estimate (`models.footprint.gguf_need`: what `medgemma models` states and the loader refuses
by) against a measured peak: each GGUF loads and answers in its own process, and its peak RSS must lie within the
stated tolerance of the estimate for the same job. The real-size figure (MedGemma 4B Q4_K_M + mmproj) is measured by
benchmarks/cpu_4b.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import exported

pytest.importorskip("llama_cpp", reason="llamacpp extra: pip install 'medgemma-toolkit[llamacpp]'")

from medgemma_toolkit.models.footprint import GIB, TOLERANCE_GIB

pytestmark = pytest.mark.slow  # converts the tiny checkpoint to GGUF and runs the real llama.cpp engine

CHILD = r"""
import json, sys
from pathlib import Path
from medgemma_toolkit import MedGemma
from medgemma_toolkit.models.footprint import gguf_need
path, image = sys.argv[1], sys.argv[2] or None
mg = MedGemma.load(path, backend="llamacpp", threads=2)
mg.ask("Describe this X-ray.", images=[image] if image else [], max_new_tokens=32)
be = mg.backend
need = gguf_need(Path(path), be.mmproj_path if image else None, be.engine.n_ctx, be.engine.n_parallel)
# VmHWM: this process's own peak (ru_maxrss would start from the forking parent's, here pytest's)
hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"peak": int(hwm.split()[1]) * 1024, "estimate": need.peak}))
"""


def measured(path: Path, image: Path | None) -> dict[str, int]:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(image or "")], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> Path:
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "xray.png"
    Image.effect_noise((80, 64), 70).convert("RGB").save(p)
    return p


def test_estimate_bounds_the_peak_of_an_image_question_on_the_tiny_gguf(tmp_path_factory, tiny_model_dir, xray):
    gguf = exported(tmp_path_factory, tiny_model_dir, "tiny") / "tiny-f32.gguf"
    m = measured(gguf, xray)
    assert m["peak"] <= m["estimate"] <= m["peak"] + TOLERANCE_GIB * GIB, m


def test_estimate_bounds_the_peak_of_the_demo_gguf():
    from medgemma_toolkit.models.demo import demo_gguf_path

    m = measured(demo_gguf_path(), None)  # 262k-token vocabulary: the output layer's buffers count here
    assert m["peak"] <= m["estimate"] <= m["peak"] + TOLERANCE_GIB * GIB, m
