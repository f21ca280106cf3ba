"""llama.cpp backend (llama-cpp-python): GGUF models on CPUs, with Gemma 3 vision through the mmproj projector.

Loads the model once (~0.5 s for Gemma 3 270M Q4_K_M against ~25 s through transformers) and decodes 2-3x faster
on CPU. Requests in a batch run one after another on the one context; llama-cpp-python reuses the KV cache for a
shared prompt prefix (e.g. an eval protocol's fixed instructions), which is where CPU batching gains come from.
Images go through libmtmd (the projector GGUF written by `medgemma export gguf` or shipped beside a community GGUF).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInput, CapabilityError, UnsupportedFormat
from ..models.checkpoint import ModelHint, variant_named_in
from ..prompts.gemma_format import render_gemma_chat
from ..prompts.messages import IMAGE_PLACEHOLDER, ImagePart, Prompt
from .base import Backend, Capabilities, Completion, DeltaCallback, GenerationRequest
from .decoding import RowState, RowTracker
from .llamacpp_logging import llama_log_callback, route_llama_logs
from .torch_setup import LoadOptions

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 8192  # Gemma 3 trains on 128k; 8k covers MedGemma's protocols (a CT volume is ~22k: raise it)
GGUF_MAGIC = b"GGUF"


def find_mmproj(model_path: Path) -> Path | None:
    """An `mmproj*.gguf` beside the model (llama.cpp's and our exporter's naming), if exactly one matches best."""
    cands = sorted(p for p in model_path.parent.glob("*.gguf") if "mmproj" in p.name.lower() and p != model_path)
    if not cands:
        return None
    stem = model_path.stem.lower()
    same = [p for p in cands if stem in p.name.lower()]  # mmproj-<stem>.gguf pairs with <stem>.gguf
    return (same or cands)[0]


def check_gguf(path: Path, what: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        raise BadInput(f"{path}: cannot read {what}") from None
    if magic != GGUF_MAGIC:
        raise UnsupportedFormat(f"{path}: not a GGUF file ({what})")


def physical_cores() -> int:
    """llama.cpp decodes fastest with one thread per physical core; hyper-threads only add contention.

    Physical cores (psutil), capped by the CPUs this process may run on (a container's or `taskset`'s share)."""
    import psutil

    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 2
    physical = psutil.cpu_count(logical=False) or max(1, logical // 2)
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    # With affinity to fewer CPUs than exist, count the physical cores behind them (two threads per core share).
    per_core = max(1, logical // physical)
    return max(1, min(physical, -(-allowed // per_core)))


def _image_slot(image: str) -> str:
    """Where an image goes in the prompt text. The HF processor puts a blank line on each side of an image; so do
    we, so both backends see one prompt (and `count_prompt_tokens` counts what `_eval_multimodal` sends)."""
    return f"\n\n{image}\n\n"


class LlamaCppBackend(Backend):
    """One `llama_cpp.Llama` (plus an mtmd context for images); `generate` serves requests in order."""

    def __init__(
        self, path: str | Path, info_hint: ModelHint | dict[str, Any], options: LoadOptions | None = None
    ) -> None:
        import llama_cpp

        options = options or LoadOptions()
        self._lc = llama_cpp
        route_llama_logs()
        self.path = Path(path)
        check_gguf(self.path, "model")
        threads = options.threads or physical_cores()
        mmproj_opt = options.mmproj
        self.mmproj_path = Path(mmproj_opt) if mmproj_opt else find_mmproj(self.path)
        if self.mmproj_path is not None:
            if not self.mmproj_path.is_file():
                raise BadInput(f"{self.mmproj_path}: mmproj file not found")
            check_gguf(self.mmproj_path, "mmproj")
        n_ctx = options.context_length
        try:
            self.llama = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx or DEFAULT_CONTEXT,
                n_batch=512,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise UnsupportedFormat(
                f"{path}: llama.cpp cannot load this GGUF ({str(e).splitlines()[0][:120]})"
            ) from None
        self.threads = threads
        self._lock = threading.Lock()  # one llama.cpp context: requests must not interleave
        self._vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self._buf = ctypes.create_string_buffer(256)
        self.template = self.llama.metadata.get("tokenizer.chat_template") or None
        self.bos = self._piece(self.llama.token_bos())
        self._mtmd = None
        image_size = tokens_per_image = None
        if self.mmproj_path is not None:
            image_size, tokens_per_image = self._init_vision(threads)
        # A GGUF of a known variant keeps its conventions (1.5: no system prompt), named in its file or metadata.
        hint = ModelHint.of(info_hint).with_variant(
            variant_named_in(self.path.name, str(self.llama.metadata.get("general.name", "")))
        )
        self.info = hint.model_info(
            path=str(path),
            backend="llamacpp",
            multimodal=self._mtmd is not None,
            image_size=image_size,
            tokens_per_image=tokens_per_image,
            has_chat_template=bool(self.template),
            extra={
                "threads": str(threads),
                "n_ctx": str(self.llama.n_ctx()),
                "mmproj": str(self.mmproj_path) if self.mmproj_path else "",
            },
        )
        # One context: requests are decoded one after another, whatever the list `generate` is given.
        self.capabilities = Capabilities(
            max_batch_size=1,
            loglikelihood=False,
            images=self._mtmd is not None,
            streaming=True,
            context_length=int(self.llama.n_ctx()),
        )

    # -- setup ----------------------------------------------------------------------------------------------------
    def _init_vision(self, threads: int) -> tuple[int | None, int | None]:
        from gguf import GGUFReader
        from llama_cpp import mtmd_cpp

        meta = GGUFReader(str(self.mmproj_path)).fields
        size = _field(meta, "clip.vision.image_size")
        patch = _field(meta, "clip.vision.patch_size")
        scale = _field(meta, "clip.vision.projector.scale_factor") or 4  # Gemma 3: 64x64 patches pooled 4x4
        # libmtmd logs every image it encodes to stderr; route it to our logger like llama.cpp's own lines.
        mtmd_cpp.mtmd_log_set(llama_log_callback(), ctypes.c_void_p(0))
        mtmd_cpp.mtmd_helper_log_set(llama_log_callback(), ctypes.c_void_p(0))
        with _quiet_native_output():
            params = mtmd_cpp.mtmd_context_params_default()
            params.use_gpu = False
            params.print_timings = False
            params.n_threads = threads
            params.warmup = False
            ctx = mtmd_cpp.mtmd_init_from_file(str(self.mmproj_path).encode(), self.llama.model, params)
        if not ctx:
            raise UnsupportedFormat(f"{self.mmproj_path}: llama.cpp cannot load this projector for this model")
        if not mtmd_cpp.mtmd_support_vision(ctx):
            mtmd_cpp.mtmd_free(ctx)
            raise UnsupportedFormat(f"{self.mmproj_path}: projector has no vision encoder")
        self._mtmd = ctx
        self._mtmd_cpp = mtmd_cpp
        tokens = ((int(size) // int(patch)) // int(scale)) ** 2 if size and patch else None
        return (int(size) if size else None), tokens

    def _piece(self, token: int) -> str:
        return self._piece_bytes(token).decode("utf-8", errors="ignore")

    def _piece_bytes(self, token: int) -> bytes:
        """Raw bytes of one token, special tokens spelled out (thinking markers must survive decoding)."""
        n = self._lc.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, True)
        if n < 0:  # longer than the buffer: grow once and retry
            self._buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, True)
        return self._buf.raw[:n]

    # -- prompt rendering -------------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        """The exact text tokenized (images as `<start_of_image>`, expanded by libmtmd)."""
        if prompt.all_images() and self._mtmd is None:
            raise CapabilityError(
                f"model {self.info.name!r} has no vision projector: it is text-only and cannot take images "
                "(give --mmproj FILE or put an mmproj*.gguf beside the model)"
            )
        if prompt.is_completion:
            return prompt.text or ""
        if not self.template:
            return render_gemma_chat(prompt.messages, bos=self.bos)
        return _render_template(self.template, prompt, self.bos, self._piece(self.llama.token_eos()))

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        """As `_eval_multimodal` lays the prompt out: each image is a blank line, <start_of_image>, its soft tokens,
        <end_of_image> and a blank line."""
        text = self.render(prompt)
        n_images = len(prompt.all_images())
        if n_images:
            # libmtmd turns its marker into <start_of_image>, the soft tokens and <end_of_image>
            text = text.replace(IMAGE_PLACEHOLDER, _image_slot(f"{IMAGE_PLACEHOLDER}<end_of_image>"))
        n = len(self.llama.tokenize(text.encode("utf-8"), add_bos=prompt.is_completion, special=True))
        return n + n_images * int(self.info.tokens_per_image or 0)

    # -- generation -----------------------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        rows = [RowState(i, r) for i, r in enumerate(requests)]
        tracker = RowTracker(rows, on_delta)
        with self._lock:
            return [self._generate_one(row, tracker) for row in rows]

    def _generate_one(self, row: RowState, tracker: RowTracker) -> Completion:
        prompt = row.request.prompt
        text = self.render(prompt)
        images = prompt.all_images()
        if text.count(IMAGE_PLACEHOLDER) != len(images):
            raise BadInput("prompt text and images disagree: one <start_of_image> per image is needed")
        # Chat-rendered text starts with <bos>; completion text needs it added.
        add_bos = prompt.is_completion
        if images:
            tokens = self._eval_multimodal(text, images, add_bos)
        else:
            tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        n_prompt = self.llama.n_tokens if images else len(tokens)
        params = row.request.params
        room = self.llama.n_ctx() - n_prompt
        if room <= 0:
            raise BadInput(f"prompt is {n_prompt} tokens; this model's context holds {self.llama.n_ctx()}")
        if params.seed is not None:
            self.llama.set_seed(params.seed)
        gen = self.llama.generate(
            tokens,
            temp=params.temperature if not params.greedy else 0.0,
            top_k=params.top_k or 0,
            top_p=params.top_p if not params.greedy else 1.0,
            min_p=0.0,
            repeat_penalty=1.0,
        )
        out = bytearray()
        n = 0
        is_eog = self._lc.llama_vocab_is_eog
        try:
            for tok in gen:
                if is_eog(self._vocab, tok):
                    tracker.update(row, out.decode("utf-8", errors="replace"), n, True)
                    break
                n += 1
                out += self._piece_bytes(tok)
                text = out.decode("utf-8", errors="replace")
                tracker.update(row, text, n, False)
                if row.finish is None and n >= room:  # context full: finish as if the budget were spent
                    tracker.update(row, text, row.request.params.max_new_tokens, False)
                if row.finish is not None:
                    break
        finally:
            gen.close()
        if row.finish is None:  # the generator ended on its own (not expected): flush what there is
            tracker.update(row, out.decode("utf-8", errors="replace"), n, True)
        return Completion(row.text, row.finish or "length", n_prompt, n)

    def _eval_multimodal(self, text: str, images: list, add_bos: bool) -> list[int]:
        """Tokenize text+images with libmtmd and evaluate them; returns the prompt as `generate` expects it."""
        m = self._mtmd_cpp
        marker = m.mtmd_default_marker().decode("utf-8")
        text = text.replace(IMAGE_PLACEHOLDER, _image_slot(marker))
        bitmaps = []
        chunks = None
        llama = self.llama
        try:
            for im in images:
                rgb = im.convert("RGB")
                data = rgb.tobytes()
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                bmp = m.mtmd_bitmap_init(rgb.width, rgb.height, buf)
                if not bmp:
                    raise BadInput("libmtmd could not take an image")
                bitmaps.append(bmp)
            inp = m.mtmd_input_text()
            raw = text.encode("utf-8")
            inp.text, inp.text_len = raw, len(raw)
            inp.add_special, inp.parse_special = add_bos, True
            chunks = m.mtmd_input_chunks_init()
            arr = (m.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            rc = m.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                raise BadInput(f"libmtmd could not tokenize the prompt with its images (code {rc})")
            total = m.mtmd_helper_get_n_tokens(chunks)
            if total >= llama.n_ctx():
                raise BadInput(f"prompt with images is {total} tokens; this model's context holds {llama.n_ctx()}")
            llama.reset()
            memory = self._lc.llama_get_memory(llama.ctx)
            if memory:  # the whole KV cache: image positions must never be matched as a cached prefix
                self._lc.llama_memory_clear(memory, True)
            for i in range(m.mtmd_input_chunks_size(chunks)):
                chunk = m.mtmd_input_chunks_get(chunks, i)
                if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    ptr = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    llama.eval([ptr[j] for j in range(n.value)])
                else:
                    start = llama.n_tokens
                    new_past = self._lc.llama_pos(0)
                    rc = m.mtmd_helper_eval_chunk_single(
                        self._mtmd,
                        llama.ctx,
                        chunk,
                        self._lc.llama_pos(start),
                        self._lc.llama_seq_id(0),
                        llama.n_batch,
                        False,
                        ctypes.byref(new_past),
                    )
                    if rc != 0:
                        raise BadInput(f"libmtmd could not encode an image (code {rc})")
                    llama.n_tokens = new_past.value
                    # No real token ids here: mark them so a later prompt never "matches" image positions.
                    llama.input_ids[start : llama.n_tokens] = -1
        finally:
            if chunks is not None:
                m.mtmd_input_chunks_free(chunks)
            for b in bitmaps:
                m.mtmd_bitmap_free(b)
        # generate() sees the whole prompt already cached and samples from the last text chunk's logits.
        return llama.input_ids[: llama.n_tokens].tolist()

    def close(self) -> None:
        if self._mtmd is not None:
            self._mtmd_cpp.mtmd_free(self._mtmd)
            self._mtmd = None
        llama = getattr(self, "llama", None)
        if llama is not None:
            llama.close()


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Silence what C code prints straight to file descriptors 1 and 2 (libmtmd's projector loading)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _field(fields: dict, key: str) -> Any:
    f = fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:
        return None


def _render_template(template: str, prompt: Prompt, bos: str, eos: str) -> str:
    """Render the GGUF's own chat template (jinja, sandboxed) the way transformers would."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise BadInput(f"chat template rejected the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = []
    for m in prompt.messages:
        content = [{"type": "image"} if isinstance(p, ImagePart) else {"type": "text", "text": p.text} for p in m.parts]
        messages.append({"role": m.role, "content": content})
    try:
        return env.from_string(template).render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=bos,
            eos_token=eos,
            raise_exception=raise_exception,
        )
    except TemplateError as e:
        raise BadInput(f"the GGUF's chat template failed to render ({type(e).__name__})") from None
