"""Real-size CPU check: MedGemma 4B's exact architecture (random weights) through each CPU backend and dtype.

Builds once, into a cache (`$MEDGEMMA_BENCH_CACHE`, default ~/.cache/medgemma-toolkit/bench):
  * the random full-size checkpoint, as `benchmarks/gpu/medgemma4b_check.py` builds it (bf16 safetensors, ~8.6 GB);
  * its GGUF export through `medgemma export gguf --outtype q4_k_m` (Q4_K_M text + the default mmproj type; other
    mmproj types and a Q8_0 text GGUF are exported on first use by the configurations that name them).
Then, each configuration in its own process (so its peak RSS is its own), loads the model and asks a text question
and an image question (a 2048x2048 synthetic chest X-ray DICOM), printing load time, peak RSS, time to first token,
decode tok/s and the image question's end-to-end time. Decode speed and memory do not depend on weight values.

HEAVY (8-10 GB per run, minutes): run it alone, e.g. `flock /work/heavy.lock python benchmarks/cpu_4b.py`.
fp32 at this size peaks near 24 GB and is never run by default.

    python benchmarks/cpu_4b.py --build-only                      # checkpoint + GGUF export, once
    python benchmarks/cpu_4b.py                                   # every configuration below, text and image
    python benchmarks/cpu_4b.py --configs transformers:bfloat16 --kinds image --profile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# transformers:DTYPE[:VISION[:plain]]: VISION is --vision-runtime (default auto: OpenVINO's tower on a bf16 CPU); the
# `:torch` row is the transformers tower, so the default path and its reference run side by side. `:plain` loads with
# MEDGEMMA_PACK_LINEARS=0 (F.linear on the plain weights instead of oneDNN-packed ones, runtime/packed_linear.py).
# llamacpp:QUANT[:MMPROJ]: QUANT is the text GGUF's type (q4_k_m: the export's; q8_0: exported on first use), MMPROJ
# the projector's weight type (default: the exporter's default, `--mmproj-outtype`).
CONFIGS = (
    "transformers:bfloat16:torch",
    "transformers:bfloat16:auto:plain",
    "transformers:bfloat16",
    "llamacpp:q4_k_m",
)
# On a CPU without bf16 instructions (AVX2 only) bf16 is emulated there: `auto` is the default path (float32 where it
# fits the memory, else bf16 weights with float32 arithmetic, runtime/bf16_weights.py); plain bf16 for comparison.
CONFIGS_NO_BF16 = (
    "transformers:auto",
    "transformers:bfloat16",
    "llamacpp:q4_k_m",
)
QUESTION = "Describe the typical findings of lobar pneumonia on a chest X-ray."
IMAGE_QUESTION = "Describe this chest X-ray."


def cache_root() -> Path:
    base = os.environ.get("MEDGEMMA_BENCH_CACHE") or Path.home() / ".cache" / "medgemma-toolkit" / "bench"
    return Path(base)


def default_configs() -> tuple[str, ...]:
    from medgemma_toolkit.runtime.torch_setup import BF16_CPU_FLAGS, cpu_flags

    return CONFIGS if cpu_flags() & BF16_CPU_FLAGS else CONFIGS_NO_BF16


def build(cache: Path, gguf: bool = True) -> tuple[Path, Path, Path]:
    """(checkpoint dir, text GGUF, mmproj GGUF), built once; `gguf=False`: the checkpoint only (the GGUF paths are
    returned as they will be named)."""
    from medgemma4b_check import build_checkpoint

    ckpt = cache / "medgemma-4b-random"
    t0 = time.perf_counter()
    build_checkpoint(ckpt, device="cpu")
    print(f"checkpoint: {ckpt} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    gguf_dir = cache / "gguf"
    text = gguf_dir / "medgemma-4b-random-q4_k_m.gguf"
    from medgemma_toolkit.export.gguf_export import DEFAULT_MMPROJ_TYPE

    # A cache built before bf16 became the default holds the f16 mmproj: either counts as built.
    found = [gguf_dir / f"mmproj-medgemma-4b-random-{t}.gguf" for t in (DEFAULT_MMPROJ_TYPE, "f16")]
    mmproj = next((p for p in found if p.is_file()), found[0])
    if gguf and not (text.is_file() and mmproj.is_file()):
        from medgemma_toolkit.export import export_gguf

        t0 = time.perf_counter()
        export_gguf(ckpt, gguf_dir, outtype="q4_k_m")
        print(f"gguf export: {gguf_dir} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return ckpt, text, mmproj


def vision_only_checkpoint(src: Path, dst: Path, seed_projector: bool = False) -> Path:
    """A checkpoint holding only `src`'s vision tower and projector (and its config and tokenizer): what the mmproj
    export reads, without staging the 8.6 GB text weights again. `seed_projector`: the projector drawn as
    `random_projector` draws it (the random checkpoint's own projector is all zeros)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if (dst / "model.safetensors").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    with safe_open(str(src / "model.safetensors"), "pt") as sf:
        tensors = {k: sf.get_tensor(k) for k in sf.keys() if k.startswith(("vision_tower.", "multi_modal_projector."))}
    if seed_projector:  # the same draws, in the same order, as random_projector (there: copied into the model)
        gen = torch.Generator().manual_seed(0)
        key = "multi_modal_projector.mm_input_projection_weight"
        w = tensors[key]
        tensors[key] = (torch.randn(w.shape, generator=gen) * w.shape[0] ** -0.5).to(w.dtype)
        key = "multi_modal_projector.mm_soft_emb_norm.weight"
        tensors[key] = (torch.randn(tensors[key].shape, generator=gen) * 0.1).to(tensors[key].dtype)
    for f in ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (src / f).is_file():
            (dst / f).write_bytes((src / f).read_bytes())
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def mmproj_file(cache: Path, outtype: str) -> Path:
    """The 4B export's mmproj in `outtype` (the one `build` wrote, or exported from the vision tensors)."""
    path = cache / "gguf" / f"mmproj-medgemma-4b-random-{outtype}.gguf"
    if not path.is_file():
        from medgemma_toolkit.export.gguf_export import export_mmproj

        ckpt = vision_only_checkpoint(cache / "medgemma-4b-random", cache / "vision-only")
        export_mmproj(ckpt, path, outtype)  # type: ignore[arg-type]
    return path


def quant_gguf(cache: Path, quant: str) -> Path:
    """The 4B export's text GGUF in `quant` (q4_k_m: the one `build` wrote; q8_0 exported text-only on first use)."""
    path = cache / "gguf" / f"medgemma-4b-random-{quant}.gguf"
    if not path.is_file():
        from medgemma_toolkit.export import export_gguf

        tmp = cache / f"gguf-{quant}"
        r = export_gguf(cache / "medgemma-4b-random", tmp, name="medgemma-4b-random", outtype=quant, vision=False)  # type: ignore[arg-type]
        r.model.rename(path)
    return path


def image_file(cache: Path) -> Path:
    """A 2048x2048 12-bit CR DICOM (the size of a real chest radiograph)."""
    path = cache / "cxr-2048.dcm"
    if not path.is_file():
        from medgemma_toolkit.testing.synthetic_cxr import make_cxr

        make_cxr(rows=2048, cols=2048).save_as(path, enforce_file_format=True)
    return path


def peak_rss_gb() -> float:
    """Peak resident set (GiB) of this process, mapped weight files included. VmHWM, not ru_maxrss: a child's
    ru_maxrss starts from its forking parent's (this script's parent imports torch to build the checkpoint)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(config: str, kinds: list[str], new_tokens: int, profile: bool) -> dict[str, object]:
    """One configuration, measured in this process."""
    from medgemma_toolkit import MedGemma

    cache = cache_root()
    backend, dtype, vision = (config.split(":") + ["auto"])[:3]  # a 4th field (`plain`) is read by main()
    ckpt, text_gguf, mmproj = build(cache, gguf=backend == "llamacpp")
    if backend == "llamacpp":
        from medgemma_toolkit.export.gguf_export import DEFAULT_MMPROJ_TYPE

        vision = DEFAULT_MMPROJ_TYPE if vision == "auto" else vision
        text_gguf, mmproj = quant_gguf(cache, dtype), mmproj_file(cache, vision)
    model = str(text_gguf if backend == "llamacpp" else ckpt)
    t0 = time.perf_counter()
    mg = MedGemma.load(
        model,
        backend=backend,
        dtype=dtype if backend == "transformers" else "auto",
        mmproj=str(mmproj) if backend == "llamacpp" else None,
        preset="medgemma-v1",
        **({"vision_runtime": vision} if backend == "transformers" else {}),
    )
    out: dict[str, object] = {
        "config": config,
        "load_s": round(time.perf_counter() - t0, 1),
        "rss_after_load_gib": round(peak_rss_gb(), 2),
        "ran": mg.backend.info.extra,
    }
    if backend == "llamacpp":
        from llamacpp_build import build_label  # benchmarks/: which llama-cpp-python build, compiled for what

        out["llama_cpp"] = build_label()
        out["vision_tower"] = {"runtime": f"libmtmd {vision}"}
    if backend == "transformers":
        random_projector(mg)
    # Warm-up: first-call allocations, thread pools, the weights' pages (transformers maps them lazily) and, for the
    # OpenVINO tower, its one-time conversion (cached: a second run only compiles).
    t = time.perf_counter()
    mg.ask("Hello.", images=[str(image_file(cache))] if "image" in kinds else [], max_new_tokens=1)
    out["warmup_s"] = round(time.perf_counter() - t, 1)
    if backend == "transformers" and "image" in kinds:
        out["tower"] = tower_check(mg, image_file(cache))
    if backend == "llamacpp" and "image" in kinds:
        out["tower"] = llama_tower_check(mg, image_file(cache))
    for n_case, kind in enumerate(kinds):
        images = [str(image_file(cache))] if kind == "image" else []
        # A different first word per call: llama.cpp would otherwise reuse the previous call's prompt from its cache.
        q = IMAGE_QUESTION if images else QUESTION
        t = time.perf_counter()
        first = mg.ask(f"Case {2 * n_case + 1}. {q}", images=images, max_new_tokens=1)
        ttft = time.perf_counter() - t
        q = f"Case {2 * n_case + 2}. {q}"
        t = time.perf_counter()
        if profile and backend == "transformers":
            import torch

            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                ans = mg.ask(q, images=images, max_new_tokens=new_tokens)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
        else:
            ans = mg.ask(q, images=images, max_new_tokens=new_tokens)
        e2e = time.perf_counter() - t
        n = ans.completion_tokens
        out[kind] = {
            "prompt_tokens": first.prompt_tokens,
            "ttft_s": round(ttft, 2),
            "end_to_end_s": round(e2e, 2),
            "new_tokens": n,
            "decode_tok_s": round((n - 1) / (e2e - ttft), 2) if n > 1 and e2e > ttft else None,
            "answer": ans.raw,  # greedy on the random checkpoint: the same text from run to run, build to build
            "timings": ans.timings,
            "text": ans.text,
        }
    out["peak_rss_gib"] = round(peak_rss_gb(), 2)
    if backend == "transformers":
        v = mg.backend.vision
        out["vision_tower"] = {"runtime": v.runtime, "reason": v.reason, "images": v.images, "fallbacks": v.fallbacks}
    return out


def random_projector(mg: object) -> None:
    """The random checkpoint's projector is all zeros (a fresh Gemma 3 projector is), so every tower would give the
    same zero image features and the same answer. Seeded non-zero weights, the same in every configuration, make
    "same greedy tokens" a real check of the tower."""
    import torch

    proj = mg.backend.model.model.multi_modal_projector  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = proj.mm_input_projection_weight
        w.copy_(torch.randn(w.shape, generator=gen) * w.shape[0] ** -0.5)
        proj.mm_soft_emb_norm.weight.copy_(torch.randn(proj.mm_soft_emb_norm.weight.shape, generator=gen) * 0.1)


def tower_check(mg: object, image: Path) -> dict[str, object]:
    """The vision tower alone on the benchmark image: the backend's tower (OpenVINO on the default path) against
    the transformers tower on the same pixels, seconds and cosine of the hidden states and projected features."""
    import torch

    from medgemma_toolkit.core.messages import ImagePart

    backend = mg.backend  # type: ignore[attr-defined]
    part = next(p for p in mg.media([str(image)]) if isinstance(p, ImagePart))  # type: ignore[attr-defined]
    px = backend.processor.image_processor(part.image, return_tensors="pt")["pixel_values"]
    px = px.to(backend.dtype)
    tower = backend.model.model.vision_tower
    proj = backend.model.model.multi_modal_projector
    res: dict[str, object] = {}
    with torch.inference_mode():
        t = time.perf_counter()
        used = tower(pixel_values=px).last_hidden_state
        res["tower_s"] = round(time.perf_counter() - t, 2)
        if backend.vision.runtime != "torch":
            t = time.perf_counter()
            ref = type(tower).forward(tower, pixel_values=px).last_hidden_state
            res["torch_tower_s"] = round(time.perf_counter() - t, 2)
            res["cos_hidden"] = round(cosine(used, ref), 6)
            res["cos_features"] = round(cosine(proj(used), proj(ref)), 6)
    # The image question's first greedy tokens through this configuration's tower (ids: see main()).
    req = mg.request(IMAGE_QUESTION, images=[str(image)])  # type: ignore[attr-defined]
    inputs = backend._encode([req.prompt]).to(backend.input_device)
    inputs["pixel_values"] = inputs["pixel_values"].to(backend.dtype)
    with torch.inference_mode():
        out = backend.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    res["greedy_ids"] = out[0, inputs["input_ids"].shape[1] :].tolist()
    return res


def llama_tower_check(mg: object, image: Path) -> dict[str, object]:
    """libmtmd's tower alone on the benchmark image, in the backend's own mtmd context (its mmproj type and
    attention kernel): the seconds of one `mtmd_encode_chunk`, without the language model's prefill."""
    backend = mg.backend  # type: ignore[attr-defined]
    m = backend._mtmd_cpp
    prepared = backend._prepare(mg.request(IMAGE_QUESTION, images=[str(image)]).prompt)  # type: ignore[attr-defined]
    try:
        chunks = prepared.chunks
        chunk = next(
            c
            for c in (m.mtmd_input_chunks_get(chunks, i) for i in range(m.mtmd_input_chunks_size(chunks)))
            if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE
        )
        t = time.perf_counter()
        rc = m.mtmd_encode_chunk(backend._mtmd, chunk)
        secs = time.perf_counter() - t
    finally:
        prepared.free()
    return {"tower_s": round(secs, 2), "rc": rc}


def cosine(a: object, b: object) -> float:
    x, y = a.float().flatten(), b.float().flatten()  # type: ignore[attr-defined]
    return float(x @ y / (x.norm() * y.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--configs",
        default=",".join(default_configs()),
        help="backend:dtype list (llamacpp:q4_k_m = the export); default: CONFIGS, or CONFIGS_NO_BF16 on a CPU "
        "without bf16 instructions",
    )
    ap.add_argument("--kinds", default="text,image")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--profile", action="store_true", help="torch profiler table for the transformers runs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if args.child:
        print(json.dumps(child(args.child, kinds, args.new_tokens, args.profile)))
        return
    configs = [c for c in args.configs.split(",") if c]
    build(cache_root(), gguf=args.build_only or any(c.startswith("llamacpp") for c in configs))
    image_file(cache_root())
    if args.build_only:
        return
    results = []
    for config in configs:
        if config.endswith("float32"):
            sys.exit("fp32 at 4B peaks near 24 GB: not run by this script")
        cmd = [sys.executable, __file__, "--child", config, "--kinds", args.kinds, "--new-tokens", str(args.new_tokens)]
        if args.profile:
            cmd.append("--profile")
        env = dict(os.environ)
        if config.split(":")[3:4] == ["plain"]:
            env["MEDGEMMA_PACK_LINEARS"] = "0"
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        sys.stderr.write(proc.stderr[-6000:] if args.profile else "")
        if proc.returncode != 0:
            print(f"{config}: failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print()
    print(
        f"{'config':32} {'kind':6} {'load s':>7} {'peak GiB':>8} {'prompt':>7} {'TTFT s':>7} {'e2e s':>7} {'tok/s':>7}"
    )
    for r in results:
        for kind in kinds:
            k = r.get(kind)
            if isinstance(k, dict):
                print(
                    f"{r['config']:32} {kind:6} {r['load_s']:7} {r['peak_rss_gib']:8} {k['prompt_tokens']:7} "
                    f"{k['ttft_s']:7} {k['end_to_end_s']:7} {k['decode_tok_s'] or '-':>7}"
                )
    tower_rows = [r for r in results if isinstance(r.get("tower"), dict)]
    if tower_rows:
        print()
        print(f"{'config':30} {'vision tower':12} {'tower s':>8} {'torch s':>8} {'cos hidden':>11} {'cos feat':>9}")
        for r in tower_rows:
            t = r["tower"]
            print(
                f"{r['config']:30} {r['vision_tower']['runtime']:12} {t['tower_s']:8} {t.get('torch_tower_s', '-'):>8} "
                f"{t.get('cos_hidden', '-'):>11} {t.get('cos_features', '-'):>9}"
            )
    # Same greedy tokens from every transformers configuration (the towers differ; the projector is seeded non-zero).
    # Token ids, not text: the random model's tokens mostly lie outside the small test tokenizer and decode to "".
    ids = {r["config"]: r["tower"]["greedy_ids"] for r in tower_rows if "greedy_ids" in r["tower"]}
    if len(ids) > 1:
        same = len({json.dumps(v) for v in ids.values()}) == 1
        print(
            f"image: same greedy token ids across {', '.join(ids)}: {'yes' if same else 'NO'} {next(iter(ids.values()))}"
        )


if __name__ == "__main__":
    main()
