"""llama.cpp backend (llama-cpp-python): GGUF models on CPUs, with Gemma 3 vision through the mmproj projector.

Loads the model once (~0.5 s for Gemma 3 270M Q4_K_M against ~25 s through transformers) and decodes 2-3x faster
on CPU. Requests are decoded together, `--parallel` sequences in one llama.cpp batch (`llamacpp_batch`): `generate`
runs a list of them, and `serve` keeps one running batch that requests join and leave between decoding steps.
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

from ..core.messages import IMAGE_PLACEHOLDER, ImagePart, Prompt
from ..core.model import ModelHint
from ..core.options import LoadOptions
from ..errors import BadInput, CapabilityError, UnsupportedFormat
from ..models.checkpoint import variant_named_in
from ..prompts.gemma_format import render_gemma_chat
from .base import Backend, Capabilities, Completion, DeltaCallback, GenerationRequest
from .llamacpp_batch import BatchEngine, DeltaSink, DoneSink, Prepared, auto_parallel
from .llamacpp_logging import llama_log_callback, route_llama_logs

log = logging.getLogger(__name__)

# The KV pool is sized to the job unless `--context-length` fixes it: `generate` (ask, batch, eval) grows it to the
# prompts it is handed plus their answer budgets, in steps of JOB_STEP cells, never past JOB_CAP (or the longest
# prompt); `serve` gives each of its `--parallel` sequences PER_SEQUENCE_CONTEXT cells.
JOB_STEP = 1024
# libmtmd's attention kernel for the image tower (llama.cpp's enum llama_flash_attn_type: -1 auto, 0 off, 1 on).
# On: at 896 px (4,096 patches x 27 layers) ggml's fused kernel was 1.4-2.1x faster than the plain
# matmul + softmax graph on a 2-core AVX512 CPU, for f16, bf16 and q8_0 projectors alike (benchmarks/mmproj_tower.py,
# docs/guides/llamacpp.md). Stated, not left to "auto", so a different automatic choice cannot slow images down.
TOWER_FLASH_ATTN = 1
JOB_CAP = 32768  # a CT volume (85 slices x 256 tokens, ~22k) and its answer fit; larger answers stop at the pool
PER_SEQUENCE_CONTEXT = 2048  # serve: cells per parallel sequence (a protocol-length prompt and answer)
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
    """One GGUF model, an mtmd context for images, and a `BatchEngine` that decodes the requests together."""

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
        try:
            # The model, its vocabulary and metadata; decoding runs in the engine's own context (below), so this
            # one is kept small.
            self.llama = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=256,
                n_batch=32,
                n_threads=threads,
                n_threads_batch=threads,
                # Read, not mapped: llama.cpp repacks most CPU weights into its interleaved layout (faster
                # kernels), and a mapping kept every page it copied them from resident too: two copies of
                # the weights (benchmarks/cpu_4b.py). Read, each tensor is held once, repacked or not.
                use_mmap=False,
                verbose=False,
            )
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise UnsupportedFormat(
                f"{path}: llama.cpp cannot load this GGUF ({str(e).splitlines()[0][:120]})"
            ) from None
        self.threads = threads
        self._lock = threading.RLock()  # one llama.cpp context: one caller decodes at a time
        self._vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self._buf = ctypes.create_string_buffer(256)
        self.template = self.llama.metadata.get("tokenizer.chat_template") or None
        self.bos = self._piece(self.llama.token_bos())
        self._mtmd = None
        image_size = tokens_per_image = None
        if self.mmproj_path is not None:
            image_size, tokens_per_image = self._init_vision(threads)
        if options.parallel is not None and options.parallel < 1:
            raise BadInput("--parallel must be at least 1")
        if options.context_length is not None and options.context_length < 1:
            raise BadInput("--context-length must be at least 1")
        # Slots: `--parallel`, else as many as the job has requests, up to the automatic count (cores, pool).
        self._fixed_parallel = options.parallel
        self._fixed_ctx = options.context_length
        parallel = options.parallel or auto_parallel(physical_cores(), options.context_length or 1 << 30)
        self._max_parallel = parallel
        # One KV pool shared by the sequences (llama-server's automatic mode), created small here and grown to the
        # first job (`_size_to_job`, `session`): memory follows what is asked, not a fixed 8-slot pool.
        self.engine = BatchEngine(
            llama_cpp,
            self.llama.model,
            n_ctx=options.context_length or JOB_STEP,
            n_parallel=options.parallel or 1,
            threads=threads,
            mtmd=self._mtmd,
            mtmd_cpp=getattr(self, "_mtmd_cpp", None),
        )
        self.engine.thought_markers = self._thought_marker_ids()
        self._serving = False  # `session()` was opened: the pool is serve's and stays its size
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
                "n_ctx": str(self._fixed_ctx or "job"),  # "job": sized to each job (`_size_to_job`, `session`)
                "parallel": str(self._fixed_parallel or f"up to {parallel}"),
                "mmproj": str(self.mmproj_path) if self.mmproj_path else "",
                "tower_attention": {1: "flash", 0: "plain"}.get(TOWER_FLASH_ATTN, "auto") if self._mtmd else "",
            },
        )
        self.capabilities = Capabilities(
            max_batch_size=parallel,
            loglikelihood=False,
            images=self._mtmd is not None,
            streaming=True,
            context_length=self._fixed_ctx or JOB_CAP,
            continuous=True,
            logprobs=True,  # computed per step from the logits buffer (llamacpp_batch.BatchEngine._sample)
            thinking_schema=self.engine.thought_markers is not None,
        )

    def _thought_marker_ids(self) -> tuple[int, int] | None:
        """The single tokens of `<unused94>`/`<unused95>` in this GGUF's vocabulary (None if either is several
        tokens: a thought could not be told from its answer while decoding)."""
        from ..prompts.thinking import THOUGHT_CLOSE, THOUGHT_OPEN

        ids = [self.llama.tokenize(m.encode(), add_bos=False, special=True) for m in (THOUGHT_OPEN, THOUGHT_CLOSE)]
        return (ids[0][0], ids[1][0]) if all(len(i) == 1 for i in ids) else None

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
            params.flash_attn_type = TOWER_FLASH_ATTN
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
        """All requests decoded together, up to `--parallel` at a time (the rest join as others finish)."""
        results: list[Completion | BaseException | None] = [None] * len(requests)
        prepared: list[Prepared] = []
        with self._lock:
            try:
                for r in requests:
                    prepared.append(self._prepare(r.prompt))
                self._size_to_job([p.n_prompt for p in prepared], [max(1, r.params.max_new_tokens) for r in requests])
            except BaseException:
                for p in prepared:
                    if p.free:
                        p.free()
                raise
            for i, (r, p) in enumerate(zip(requests, prepared)):

                def done(c: Completion | BaseException, i: int = i) -> None:
                    results[i] = c

                sink = None if on_delta is None else (lambda d, i=i: on_delta(i, d))
                self.engine.add(r, p, sink, done)
            while any(c is None for c in results):
                self.engine.step()
        for c in results:
            if isinstance(c, BaseException):
                raise c
        return [c for c in results if isinstance(c, Completion)]

    def session(self) -> LlamaSession:
        """Continuous batching for `serve`: requests join and leave the running batch between decoding steps. The
        pool becomes serve's: `--parallel` slots (default: automatic) of PER_SEQUENCE_CONTEXT cells each, or
        `--context-length` cells."""
        with self._lock:
            slots = self._fixed_parallel or self._max_parallel
            if not self.engine.busy:
                self.engine.resize(self._fixed_ctx or PER_SEQUENCE_CONTEXT * slots, slots)
            self._serving = True
        return LlamaSession(self)

    def context_length(self) -> int | None:
        """Tokens one sequence may span: the pool, once fixed (`--context-length`, `serve`); else what a job-sized
        pool may grow to."""
        return self.engine.n_ctx if self._fixed_ctx or self._serving else JOB_CAP

    def _size_to_job(self, prompts: Sequence[int], budgets: Sequence[int]) -> None:
        """Grow the idle engine's pool and slots to this job: as many slots as requests (at most the automatic count
        or exactly `--parallel`), and room for the largest of them to run at once, prompt plus answer budget,
        rounded up to JOB_STEP cells. Never shrinks (a chat's next turn keeps its prompt cache)."""
        eng = self.engine
        if eng.busy or self._serving or not prompts:
            return
        slots = self._fixed_parallel or min(self._max_parallel, len(prompts))
        cells = eng.n_ctx
        if not self._fixed_ctx:
            need = sum(sorted((p + b for p, b in zip(prompts, budgets)), reverse=True)[:slots])
            cap = max(JOB_CAP, max(prompts) + 1)  # an answer budget beyond the cap stops where the pool ends
            cells = max(cells, -(-min(need, cap) // JOB_STEP) * JOB_STEP)
        eng.resize(cells, max(slots, eng.n_parallel))

    def _prepare(self, prompt: Prompt) -> Prepared:
        """Render and tokenize a prompt (images through libmtmd, evaluated later into the sequence's KV cells)."""
        text = self.render(prompt)
        images = prompt.all_images()
        if text.count(IMAGE_PLACEHOLDER) != len(images):
            raise BadInput("prompt text and images disagree: one <start_of_image> per image is needed")
        add_bos = prompt.is_completion  # chat-rendered text starts with <bos>; completion text needs it added
        if not images:
            tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
            return Prepared(tokens, len(tokens))
        return self._tokenize_multimodal(text, images, add_bos)

    def _tokenize_multimodal(self, text: str, images: list, add_bos: bool) -> Prepared:
        """libmtmd's chunks for text+images; `tokens` lists the prompt with -1 at image positions."""
        m = self._mtmd_cpp
        marker = m.mtmd_default_marker().decode("utf-8")
        text = text.replace(IMAGE_PLACEHOLDER, _image_slot(marker))
        bitmaps: list[Any] = []
        chunks = m.mtmd_input_chunks_init()

        def free() -> None:
            m.mtmd_input_chunks_free(chunks)
            for b in bitmaps:
                m.mtmd_bitmap_free(b)

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
            arr = (m.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            rc = m.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                raise BadInput(f"libmtmd could not tokenize the prompt with its images (code {rc})")
            tokens: list[int] = []
            for i in range(m.mtmd_input_chunks_size(chunks)):
                chunk = m.mtmd_input_chunks_get(chunks, i)
                if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    ptr = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    tokens += [ptr[j] for j in range(n.value)]
                else:
                    tokens += [-1] * m.mtmd_input_chunk_get_n_tokens(chunk)
        except BaseException:
            free()
            raise
        return Prepared(tokens, len(tokens), chunks=chunks, free=free)

    def prompt_logits(self, prompt: Prompt) -> Any:
        """Next-token logits after `prompt`, decoded alone (to check this engine against another one)."""
        with self._lock:
            prepared = self._prepare(prompt)
            self._size_to_job([prepared.n_prompt], [1])
            return self.engine.logits_after(prepared)

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
        if self._mtmd is not None:
            self._mtmd_cpp.mtmd_free(self._mtmd)
            self._mtmd = None
        llama = getattr(self, "llama", None)
        if llama is not None:
            llama.close()


class LlamaSession:
    """`serve`'s handle on the engine: `add` a request whenever, `step` decodes one batch for everyone admitted."""

    def __init__(self, backend: LlamaCppBackend) -> None:
        self._backend = backend

    @property
    def busy(self) -> bool:
        return self._backend.engine.busy

    @property
    def running(self) -> int:
        return self._backend.engine.running

    def add(self, request: GenerationRequest, on_delta: DeltaSink | None, on_done: DoneSink) -> None:
        """Tokenize now (a bad prompt raises here, for this request alone); the request joins at a later step."""
        be = self._backend
        with be._lock:
            be.engine.add(request, be._prepare(request.prompt), on_delta, on_done)

    def step(self) -> None:
        with self._backend._lock:
            self._backend.engine.step()

    def abort(self, error: BaseException) -> None:
        with self._backend._lock:
            self._backend.engine.abort_all(error)


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
