"""Make a transformers-5 Gemma 3 checkpoint readable by llama.cpp's converter, in a staging folder.

The converter was written against transformers-4 checkpoints. A checkpoint saved by transformers 5 (a merged
fine-tune, our tiny test models) differs in ways it does not handle, so we fix them here rather than patch it:

* SigLIP weights are saved as `vision_tower.*`; the converter maps only `vision_tower.vision_model.*`.
* Special tokens are read from `added_tokens_decoder` in tokenizer_config.json, which transformers 5 no longer
  writes; without it `<start_of_turn>` etc. become plain text pieces.
* The Gemma 3 path wants a SentencePiece `tokenizer.model`; transformers 5 may save only tokenizer.json. We write
  an equivalent one (BPE model, merge rank as score), which llama.cpp's SPM tokenizer reproduces.
* llama.cpp scales attention by 1/sqrt(head_dim) (27B: hidden/heads) and ignores `query_pre_attn_scalar`; when
  they differ, the ratio is folded into the q-norm weights (exact, since the norm output is linear in them).
* llama.cpp hard-codes Gemma 3's 5-local:1-global layer pattern: other patterns are refused, not silently broken.

The user's checkpoint is never modified: untouched files are linked, changed ones rewritten into the staging dir.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import BadInput, UnsupportedFormat

_SPM_NORMAL, _SPM_UNKNOWN, _SPM_CONTROL, _SPM_USER_DEFINED, _SPM_BYTE = 1, 2, 3, 4, 6
_LLAMA_SWA_PERIOD = 6  # llama.cpp's Gemma 3 default: every 6th layer attends globally


def read_config(checkpoint: Path) -> dict[str, Any]:
    cfg_file = checkpoint / "config.json"
    if not cfg_file.is_file():
        raise BadInput(f"{checkpoint}: not a Hugging Face checkpoint directory (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError:
        raise BadInput(f"{checkpoint}/config.json is not valid JSON") from None
    arch = (cfg.get("architectures") or [""])[0]
    if arch not in ("Gemma3ForConditionalGeneration", "Gemma3ForCausalLM"):
        raise UnsupportedFormat(
            f"{checkpoint}: architecture {arch or 'unknown'!r} is not MedGemma's "
            "(Gemma3ForConditionalGeneration or Gemma3ForCausalLM)"
        )
    return cfg


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg.get("text_config") or cfg


def check_layer_pattern(cfg: dict[str, Any]) -> None:
    tc = text_config(cfg)
    types = tc.get("layer_types")
    if not types:
        return
    expected = [
        "full_attention" if (i + 1) % _LLAMA_SWA_PERIOD == 0 else "sliding_attention" for i in range(len(types))
    ]
    if list(types) != expected:
        raise UnsupportedFormat(
            "this checkpoint's local/global attention layer pattern differs from Gemma 3's 5:1, which llama.cpp "
            "assumes; it cannot be exported to GGUF faithfully"
        )


def attention_fold(cfg: dict[str, Any]) -> float:
    """Factor to multiply (1 + q_norm.weight) by so llama.cpp's fixed attention scale gives HF's result."""
    tc = text_config(cfg)
    head_dim = int(tc.get("head_dim", 256))
    n_layers = int(tc.get("num_hidden_layers", 0))
    llama_dim = tc["hidden_size"] / tc["num_attention_heads"] if n_layers == 62 else head_dim
    llama_dim = float(int(llama_dim))  # llama.cpp divides integers
    qpas = float(tc.get("query_pre_attn_scalar") or head_dim)
    return math.sqrt(llama_dim / qpas)


def stage_checkpoint(checkpoint: Path, staging: Path) -> dict[str, Any]:
    """Fill `staging` with a converter-ready copy of `checkpoint`; returns a record of what was fixed."""
    cfg = read_config(checkpoint)
    check_layer_pattern(cfg)
    staging.mkdir(parents=True, exist_ok=True)
    fixes: dict[str, Any] = {}
    weight_files = sorted(checkpoint.glob("*.safetensors"))
    if not weight_files:
        raise BadInput(f"{checkpoint}: no .safetensors weights found")
    for f in checkpoint.iterdir():
        if (
            f.is_file()
            and f.suffix != ".safetensors"
            and f.name not in ("tokenizer_config.json", "model.safetensors.index.json")
        ):
            _link(f, staging / f.name)
    fold = attention_fold(cfg)
    renamed = _stage_weights(checkpoint, staging, weight_files, fold)
    if renamed:
        fixes["vision_keys_renamed"] = renamed
    if abs(fold - 1.0) > 1e-9:
        fixes["query_scale_folded"] = round(fold, 6)
    tokenizer_json = checkpoint / "tokenizer.json"
    tok = json.loads(tokenizer_json.read_text()) if tokenizer_json.is_file() else None
    fixes["added_tokens_decoder"] = _stage_tokenizer_config(checkpoint, staging, tok)
    if not (checkpoint / "tokenizer.model").is_file():
        if tok is None:
            raise BadInput(f"{checkpoint}: neither tokenizer.model nor tokenizer.json found")
        write_sentencepiece_model(tok, staging / "tokenizer.model")
        fixes["tokenizer_model_written"] = True
    return fixes


def _link(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # other filesystem
        shutil.copy2(src, dst)


def _new_key(key: str) -> str:
    """transformers-5 names -> the transformers-4 names the converter maps."""
    for prefix in ("model.vision_tower.", "vision_tower."):
        if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
            return prefix + "vision_model." + key[len(prefix) :]
    return key


def _is_q_norm(key: str) -> bool:
    return key.endswith("self_attn.q_norm.weight") and "vision" not in key


def _stage_weights(checkpoint: Path, staging: Path, files: list[Path], fold: float) -> int:
    from safetensors import safe_open
    from safetensors.torch import save_file

    renamed = 0
    key_map: dict[str, str] = {}
    for f in files:
        with safe_open(str(f), "pt") as sf:
            keys = list(sf.keys())
            meta = sf.metadata() or {}
            changed = [k for k in keys if _new_key(k) != k or (_is_q_norm(k) and abs(fold - 1.0) > 1e-9)]
            for k in keys:
                key_map[k] = _new_key(k)
            if not changed:
                _link(f, staging / f.name)
                continue
            tensors = {}
            for k in keys:
                t = sf.get_tensor(k)
                if _is_q_norm(k) and abs(fold - 1.0) > 1e-9:
                    t = ((1.0 + t.float()) * fold - 1.0).to(t.dtype)
                tensors[_new_key(k)] = t
            renamed += sum(_new_key(k) != k for k in keys)
        save_file(tensors, str(staging / f.name), metadata={"format": meta.get("format", "pt")})
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {key_map.get(k, k): v for k, v in data.get("weight_map", {}).items()}
        (staging / index.name).write_text(json.dumps(data, indent=2))
    return renamed


def _stage_tokenizer_config(checkpoint: Path, staging: Path, tok: dict[str, Any] | None) -> int:
    cfg_file = checkpoint / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    if not cfg.get("added_tokens_decoder") and tok is not None:
        cfg["added_tokens_decoder"] = {
            str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tok.get("added_tokens", [])
        }
    (staging / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    return len(cfg.get("added_tokens_decoder") or {})


def write_sentencepiece_model(tok: dict[str, Any], out: Path) -> None:
    """Write a SentencePiece BPE model equivalent to a Gemma-style tokenizer.json (byte fallback, "▁" spaces).

    SentencePiece's BPE merges the adjacent pair whose joined piece scores highest; scoring each merged piece by
    minus its merge rank makes that the same order as the tokenizer.json merges.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm

    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedFormat("tokenizer.json is not a BPE tokenizer; cannot derive a tokenizer.model for GGUF")
    vocab: dict[str, int] = model["vocab"]
    added = {t["id"]: t for t in tok.get("added_tokens", [])}
    rank: dict[str, int] = {}
    for i, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, i)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise UnsupportedFormat("tokenizer.json vocabulary ids are not contiguous; cannot derive a tokenizer.model")
    unk = model.get("unk_token") or "<unk>"
    proto = spm.ModelProto()  # type: ignore[attr-defined]  # generated protobuf module, no stubs for its classes
    n_merges = len(rank)
    for piece, i in by_id:
        p = proto.pieces.add()
        p.piece = piece
        if piece == unk:
            p.type, p.score = _SPM_UNKNOWN, 0.0
        elif i in added:
            p.type = _SPM_CONTROL if added[i].get("special") else _SPM_USER_DEFINED
            p.score = 0.0
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            p.type, p.score = _SPM_BYTE, 0.0
        else:
            p.type = _SPM_NORMAL
            p.score = float(-rank[piece]) if piece in rank else float(-n_merges - i)
    ids = {
        name: vocab.get(tok_name, -1)
        for name, tok_name in (("unk", unk), ("bos", "<bos>"), ("eos", "<eos>"), ("pad", "<pad>"))
    }
    ts = proto.trainer_spec
    ts.model_type = 2  # BPE
    ts.vocab_size = len(by_id)
    ts.byte_fallback = bool(model.get("byte_fallback", True))
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = ids["unk"], ids["bos"], ids["eos"], ids["pad"]
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = False
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    out.write_bytes(proto.SerializeToString())
