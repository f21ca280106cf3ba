"""Several sequences in one `llama_decode` call: llama.cpp's batch API and per-sequence KV cache.

One llama.cpp context holds up to `n_parallel` sequences (seq ids 0..n-1) in one unified KV pool, as llama-server
does when its slot count is automatic (tools/server/server.cpp: `n_parallel = 4; kv_unified = true`; with a unified
cache src/llama-context.cpp gives each sequence the whole `n_ctx`). Each `step()` builds one batch: the newest token of
every generating sequence plus as many waiting prompt tokens as fit in `n_batch` (prompts are prefilled together,
a long one in chunks, like llama-server's slots), decodes it once, and samples every sequence whose logits came out.
A sequence joins between steps when a seq id is free and its KV cells fit (prompt plus answer budget are reserved,
so a running sequence never finds the pool full), and leaves as soon as it finishes.

Prompt cache (llama-server's idea of a slot that keeps its last prompt): a text-only sequence that finishes keeps its
KV cells, and its seq id remembers the tokens in them (prompt plus the generated tokens fed back). A new prompt takes
the free seq id whose tokens share its longest prefix, drops that id's cells from where they part, and prefills only
the rest: a chat resending its history prefills only the new turn. Idle caches occupy the pool; a newcomer that does
not fit evicts them, least recently used first, before it waits.

Images: a prompt with images is prefilled alone into its seq id through libmtmd when it joins (the vision encoder
and its non-causal image batch run outside the shared batch); only its final prompt token joins the shared batch.
"""

from __future__ import annotations

import ctypes
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BadInput, MedGemmaError
from .base import Completion, GenerationRequest
from .decoding import RowState, RowTracker
from .logprobs import entry, log_softmax_np, top_np

log = logging.getLogger(__name__)

DeltaSink = Callable[[str], None]
DoneSink = Callable[[Completion | BaseException], None]
MIN_SEQ_CONTEXT = 1024  # the auto `--parallel` keeps at least this many KV cells per sequence


def auto_parallel(cores: int, n_ctx: int) -> int:
    """Sequences decoded together by default: 4 per physical core (on 2 cores a step of 8 sequences costs ~3x one
    sequence's: 2.4-2.8x the tokens per second), at most 16, and no more than the pool gives 1k cells each."""
    return max(1, min(16, 4 * cores, n_ctx // MIN_SEQ_CONTEXT))


class LlamaDecodeError(MedGemmaError):
    """llama.cpp failed a decode call (the sequences in it fail; the engine stays usable)."""


@dataclass
class Prepared:
    """A tokenized prompt: plain tokens, or libmtmd chunks (text and images) evaluated when the sequence joins."""

    tokens: list[int]
    n_prompt: int
    chunks: Any = None  # mtmd_input_chunks*, owned (freed by `free`)
    free: Callable[[], None] | None = None


@dataclass
class _Seq:
    row: RowState
    tracker: RowTracker
    prepared: Prepared
    on_done: DoneSink
    reserve: int  # KV cells held for prompt + answer
    seq_id: int = -1
    pos: int = 0  # position of the next token fed
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    last: int = -1  # sampled token to feed next
    out: bytearray = field(default_factory=bytearray)
    n: int = 0  # tokens generated
    sampler: Any = None  # llama_sampler* chain; None = greedy (argmax over the logits)
    logits_at: int = -1  # row of the current batch whose logits belong to this sequence
    fed: list[int] = field(default_factory=list)  # tokens whose KV is in this seq id's cells (a text prompt's cache)
    constraint: Any = None  # constrain.RowConstraint when the answer must follow a JSON schema
    step_logprobs: dict[str, Any] | None = None  # the sampled token's log-probability entry, until it is counted


class BatchEngine:
    """Owns one llama.cpp context with `n_parallel` sequences; not thread-safe (the backend serialises calls)."""

    def __init__(
        self,
        lc: Any,
        model: Any,
        *,
        n_ctx: int,
        n_parallel: int,
        threads: int,
        n_batch: int = 512,
        mtmd: Any = None,
        mtmd_cpp: Any = None,
        unified: bool = True,
        swa_full: bool = False,
    ) -> None:
        self._lc = lc
        self._model = model
        self._threads = threads
        self._unified = unified
        # Sliding-window layers keep only their window (plus one ubatch) per sequence unless `swa_full`: Gemma 3's
        # local layers (5 of 6) then cost ~1k cells per sequence instead of the whole pool. Cells that slid out are
        # gone, so a cached prefix is reused only while it still holds the window the next token needs (`_take_id`).
        self._swa_full = swa_full
        self._n_swa = int(lc.llama_model_n_swa(model))
        self.n_batch = n_batch
        self.ctx: Any = None
        self._vocab = lc.llama_model_get_vocab(model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        self._ll_tokenizer: Any = None  # llguidance's view of the vocabulary, built at the first JSON schema
        self._eog: list[int] = []  # end-of-generation tokens, found with it
        self.thought_markers: tuple[int, int] | None = None  # set by the backend: thinking with a schema
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(n_batch,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n_batch,))
        self._nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n_batch,))
        self._logits = np.ctypeslib.as_array(self._batch.logits, shape=(n_batch,))
        self._nseq[:] = 1
        self._mtmd, self._m = mtmd, mtmd_cpp
        self._waiting: deque[_Seq] = deque()
        self._active: list[_Seq] = []
        self._reserved = 0
        self._buf = ctypes.create_string_buffer(256)
        self.reuse_prefix = True  # keep finished text sequences' KV as a prompt cache per seq id
        self.cached_prompt_tokens = 0  # prompt tokens served from the cache instead of prefilled (total)
        self._open(n_ctx, n_parallel)

    def _open(self, n_ctx: int, n_parallel: int) -> None:
        """A llama.cpp context whose KV pool of `n_ctx` cells is shared by `n_parallel` sequences (seq ids)."""
        lc = self._lc
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = n_parallel
        params.n_threads = params.n_threads_batch = self._threads
        params.kv_unified = self._unified
        params.swa_full = self._swa_full
        # As llama-cpp-python's `Llama` (the one-at-a-time reference): the same kernels give the same answers.
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        self.ctx = lc.llama_init_from_model(self._model, params)
        if not self.ctx:
            raise BadInput(f"llama.cpp could not create a context of {n_ctx} tokens for {n_parallel} sequences")
        self.n_ctx = int(lc.llama_n_ctx(self.ctx))
        self.n_parallel = n_parallel
        self._memory = lc.llama_get_memory(self.ctx)
        self._free_ids = list(range(n_parallel - 1, -1, -1))
        # free seq id -> tokens whose KV its cells still hold; in the order they were written, so the first is the
        # least recently used (a taken id leaves the map, and re-enters it at the end when it finishes)
        self._cache: dict[int, list[int]] = {}

    def resize(self, n_ctx: int, n_parallel: int) -> None:
        """Re-create the context with another KV pool and slot count, when idle (prompt caches are dropped): the
        backend sizes the pool to the job it is handed, so memory follows what is asked of it."""
        if self.busy:
            raise RuntimeError("cannot resize a running llama.cpp engine")
        if (n_ctx, n_parallel) == (self.n_ctx, self.n_parallel):
            return
        log.debug("llama.cpp context: %d KV cells for %d sequences", n_ctx, n_parallel)
        self._lc.llama_free(self.ctx)
        self.ctx = None
        self._open(n_ctx, n_parallel)

    # -- public ---------------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return bool(self._active or self._waiting)

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def cached_cells(self) -> int:
        """KV cells held by the prompt caches of idle seq ids."""
        return sum(len(t) for t in self._cache.values())

    def clear_cache(self) -> None:
        """Free every idle seq id's cached cells."""
        for i in list(self._cache):
            self._evict(i)

    def add(
        self, request: GenerationRequest, prepared: Prepared, on_delta: DeltaSink | None, on_done: DoneSink
    ) -> None:
        """Queue a request; it joins at the next `step()` with room for it. `on_done` receives its `Completion`."""
        if prepared.n_prompt >= self.n_ctx:
            if prepared.free:
                prepared.free()
            raise BadInput(f"prompt is {prepared.n_prompt} tokens; this model's context holds {self.n_ctx}")
        row = RowState(0, request)
        tracker = RowTracker([row], None if on_delta is None else (lambda _i, d: on_delta(d)))
        reserve = min(self.n_ctx, prepared.n_prompt + max(1, request.params.max_new_tokens))
        self._waiting.append(_Seq(row, tracker, prepared, on_done, reserve))

    def step(self) -> None:
        """Admit waiting sequences, decode one batch, sample, and finish what is done (callbacks fire here)."""
        self._drop_cancelled()
        self._admit()
        batch = self._fill()
        if not batch:
            return
        rc = self._lc.llama_decode(self.ctx, self._batch)
        if rc != 0:
            for s in batch:
                self._release(s, LlamaDecodeError(f"llama.cpp could not decode the batch (code {rc})"))
            return
        for s in batch:
            if s.logits_at >= 0:
                self._advance(s, self._sample(s))

    def logits_after(self, prepared: Prepared) -> np.ndarray:
        """Next-token logits after a prompt decoded alone in a free seq id (for checks against other engines)."""
        if not self._free_ids:
            raise BadInput("no free sequence")
        s = _Seq(RowState(0, GenerationRequest(None)), RowTracker([]), prepared, lambda _c: None, 0)  # type: ignore[arg-type]
        s.seq_id = self._pick_empty()
        self._take_id(s.seq_id, 0)  # decoded from scratch: no cached prefix
        self._make_room(self._reserved + prepared.n_prompt)
        try:
            if prepared.chunks is not None:
                self._prefill_multimodal(s)
            else:
                s.pending = list(prepared.tokens)
            self._decode_alone(s, s.pending[:-1])
            self._put(0, s.pending[-1], s.pos, s.seq_id, True)
            self._batch.n_tokens = 1
            if self._lc.llama_decode(self.ctx, self._batch) != 0:
                raise LlamaDecodeError("llama.cpp could not decode the prompt")
            return np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self.ctx, 0), shape=(self.n_vocab,)).copy()
        finally:
            self._lc.llama_memory_seq_rm(self._memory, s.seq_id, -1, -1)
            self._free_ids.append(s.seq_id)
            if prepared.free:
                prepared.free()

    def abort_all(self, error: BaseException) -> None:
        """Fail every sequence (e.g. the engine's caller is shutting down)."""
        for s in list(self._active):
            self._release(s, error)
        while self._waiting:
            s = self._waiting.popleft()
            if s.prepared.free:
                s.prepared.free()
            s.on_done(error)

    def close(self) -> None:
        self._cache.clear()
        if self.ctx:
            self._lc.llama_batch_free(self._batch)
            self._lc.llama_free(self.ctx)
            self.ctx = None

    # -- admission ------------------------------------------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for s in [s for s in self._waiting if s.row.request.cancelled is not None and s.row.request.cancelled()]:
            self._waiting.remove(s)
            if s.prepared.free:
                s.prepared.free()
            s.on_done(Completion("", "cancelled", s.prepared.n_prompt, 0))

    def _admit(self) -> None:
        while self._waiting and self._free_ids:
            s = self._waiting[0]
            if self._active and self._reserved + s.reserve > self.n_ctx:
                return  # first come, first served: wait for cells rather than let later ones overtake
            seq_id, reuse = self._pick(s.prepared)
            # Its reserve covers the reused prefix; other idle caches give way, least recently used first.
            self._make_room(self._reserved + s.reserve, keep=seq_id)
            self._waiting.popleft()
            s.seq_id, reuse = seq_id, self._take_id(seq_id, reuse)
            self._reserved += s.reserve
            self._active.append(s)
            s.sampler = self._make_sampler(s.row.request)
            try:
                req = s.row.request
                if req.json_schema is not None or (req.think and req.max_thought_tokens):
                    s.constraint = self._constraint(req)
                if s.prepared.chunks is not None:
                    self._prefill_multimodal(s)
                else:
                    s.pos = reuse
                    s.fed = list(s.prepared.tokens[:reuse])
                    s.pending = list(s.prepared.tokens[reuse:])
                    if reuse:
                        self.cached_prompt_tokens += reuse
                        log.debug("prompt cache: %d of %d prompt tokens reused", reuse, s.prepared.n_prompt)
            except BaseException as e:
                self._release(s, e)
            finally:
                if s.prepared.free:
                    s.prepared.free()
                    s.prepared.free = None

    def _pick(self, prepared: Prepared) -> tuple[int, int]:
        """The free seq id whose cache shares the longest prefix with this text prompt, and how many tokens to reuse
        (at most all but the last: one token is always decoded, so logits come out). A cache is only taken when at
        least half of it is reused (like llama-server's slot similarity): an unrelated prompt sharing `<bos>` and a
        turn marker must not wipe out a long conversation's cache, and where it would save a few tokens it is
        prefilled from scratch instead (a prefill split in two rounds differently, which can flip a near-tie)."""
        best, best_n = -1, 0
        tokens = prepared.tokens
        if self.reuse_prefix and prepared.chunks is None:
            for i in self._free_ids:
                cached = self._cache.get(i)
                n = _common_prefix(cached, tokens)
                if n > best_n and 2 * n >= len(cached or ()):
                    best, best_n = i, n
        if best < 0:
            return self._pick_empty(), 0
        return best, min(best_n, len(tokens) - 1)

    def _pick_empty(self) -> int:
        """A free seq id without a cache (the lowest), else the least recently used cache's."""
        empty = [i for i in self._free_ids if i not in self._cache]
        return empty[-1] if empty else next(iter(self._cache))

    def _take_id(self, seq_id: int, reuse: int) -> int:
        """Take a free seq id, keep its first `reuse` cached tokens' cells and drop the rest; returns how many were
        kept (0 where llama.cpp cannot cut the sequence there)."""
        self._free_ids.remove(seq_id)
        cached = self._cache.pop(seq_id, None)
        if cached is None:
            return 0
        if reuse > 0 and not self._swa_full and self._n_swa > 0:
            # A windowed SWA cache keeps only the last n_swa positions the sequence reached; the token after the
            # kept prefix needs the n_swa before it. llama-server's test (tools/server/server-context.cpp):
            # usable when pos_min == 0 or pos_min < n_past - n_swa; else prefill from scratch.
            pos_min = self._lc.llama_memory_seq_pos_min(self._memory, seq_id)
            if pos_min != 0 and pos_min >= reuse - self._n_swa:
                reuse = 0
        if reuse > 0 and self._lc.llama_memory_seq_rm(self._memory, seq_id, reuse, -1):
            return reuse
        self._lc.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        return 0

    def _make_room(self, need: int, keep: int = -1) -> None:
        """Evict idle caches (least recently used first, never `keep`'s) until `need` cells plus theirs fit."""
        others = [i for i in self._cache if i != keep]
        held = sum(len(self._cache[i]) for i in others)
        for i in others:
            if need + held <= self.n_ctx:
                return
            held -= len(self._cache[i])
            self._evict(i)

    def _evict(self, seq_id: int) -> None:
        self._lc.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        del self._cache[seq_id]

    def _make_sampler(self, request: GenerationRequest) -> Any:
        p = request.params
        if p.greedy:
            return None
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if p.top_k:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(p.top_k))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(p.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(p.temperature))
        seed = lc.LLAMA_DEFAULT_SEED if p.seed is None else p.seed & 0xFFFFFFFF
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def _prefill_multimodal(self, s: _Seq) -> None:
        """Evaluate text and image chunks into the sequence alone; keep the last prompt token for the shared batch."""
        m, lc = self._m, self._lc
        chunks = s.prepared.chunks
        n_chunks = m.mtmd_input_chunks_size(chunks)
        for i in range(n_chunks):
            chunk = m.mtmd_input_chunks_get(chunks, i)
            if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                toks = [ptr[j] for j in range(n.value)]
                if i == n_chunks - 1:
                    self._decode_alone(s, toks[:-1])
                    s.pending = toks[-1:]
                else:
                    self._decode_alone(s, toks)
            else:
                new_past = lc.llama_pos(0)
                rc = m.mtmd_helper_eval_chunk_single(
                    self._mtmd,
                    self.ctx,
                    chunk,
                    lc.llama_pos(s.pos),
                    lc.llama_seq_id(s.seq_id),
                    self.n_batch,
                    False,
                    ctypes.byref(new_past),
                )
                if rc != 0:
                    raise BadInput(f"libmtmd could not encode an image (code {rc})")
                s.pos = new_past.value
        if not s.pending:
            raise BadInput("a prompt must end with text after its last image")

    def _decode_alone(self, s: _Seq, tokens: list[int]) -> None:
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start : start + self.n_batch]
            for k, t in enumerate(part):
                self._put(k, t, s.pos + k, s.seq_id, False)
            self._batch.n_tokens = len(part)
            rc = self._lc.llama_decode(self.ctx, self._batch)
            if rc != 0:
                raise LlamaDecodeError(f"llama.cpp could not decode a prompt (code {rc})")
            s.pos += len(part)

    # -- one decode step ------------------------------------------------------------------------------------------
    def _put(self, k: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        self._tok[k] = token
        self._pos[k] = pos
        self._batch.seq_id[k][0] = seq_id
        self._logits[k] = logits

    def _fill(self) -> list[_Seq]:
        """The batch: each generating sequence's newest token first, then prompt tokens while they fit."""
        k = 0
        members: list[_Seq] = []
        for s in self._active:
            s.logits_at = -1
            if s.last >= 0:
                self._put(k, s.last, s.pos, s.seq_id, True)
                s.fed.append(s.last)
                s.logits_at = k
                s.pos += 1
                k += 1
                members.append(s)
        for s in self._active:
            if s.pending and k < self.n_batch:
                part = s.pending[: self.n_batch - k]
                done = len(part) == len(s.pending)
                for j, t in enumerate(part):
                    self._put(k, t, s.pos + j, s.seq_id, done and j == len(part) - 1)
                    k += 1
                s.pos += len(part)
                s.fed += part
                s.pending = s.pending[len(part) :]
                s.logits_at = k - 1 if done else -1
                members.append(s)
        self._batch.n_tokens = k
        return members

    def _sample(self, s: _Seq) -> int:
        ptr = self._lc.llama_get_logits_ith(self.ctx, s.logits_at)
        top = s.row.request.logprobs
        # Log-probabilities of the raw logits, read before the schema mask and the sampler chain touch the buffer.
        lp = None if top is None else log_softmax_np(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))
        if s.constraint is not None:
            # Masked in place: the sampler chain reads the same buffer.
            logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
            logits[~s.constraint.allowed(self.n_vocab)] = -np.inf
        if s.sampler is not None:
            token = int(self._lc.llama_sampler_sample(s.sampler, self.ctx, s.logits_at))
        else:
            token = int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())
        if s.constraint is not None:
            s.constraint.accept(token)
        if lp is not None and top is not None:
            ids, values = top_np(lp, top)
            s.step_logprobs = entry(self._text, token, float(lp[token]), ids, values, self._piece)
        return token

    def _text(self, token: int) -> str:
        return self._piece(token).decode("utf-8", errors="replace")

    def _constraint(self, request: GenerationRequest) -> Any:
        """The same engine (llguidance) as the transformers backend, over llama.cpp's vocabulary: one schema
        coverage everywhere. (llama-cpp-python's own schema-to-GBNF converter silently drops `minimum`/`maximum`.)
        A thinking request's schema starts after its thought (`constrain.ThinkingConstraint`)."""
        from .constrain import RowConstraint, ThinkingConstraint

        lc = self._lc
        if self._ll_tokenizer is None:
            from llguidance.llamacpp import lltokenizer_from_vocab

            self._eog = [t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self._vocab, t)]
            self._ll_tokenizer = lltokenizer_from_vocab(self._vocab, eos_token=self._eog)
        schema = request.json_schema
        answer = None if schema is None else RowConstraint(self._ll_tokenizer, schema, self._eog)
        if request.think and self.thought_markers is not None:
            return ThinkingConstraint(answer, self.thought_markers, self._eog, request.max_thought_tokens)
        return answer

    def _advance(self, s: _Seq, token: int) -> None:
        row, tracker = s.row, s.tracker
        if self._lc.llama_vocab_is_eog(self._vocab, token):
            tracker.update(row, s.out.decode("utf-8", errors="replace"), s.n, True)
        else:
            s.n += 1
            if s.step_logprobs is not None:  # counted tokens only: the end of turn has no entry, as on transformers
                if row.logprobs is None:
                    row.logprobs = []
                row.logprobs.append(s.step_logprobs)
                if row.request.on_logprobs is not None:
                    row.request.on_logprobs([s.step_logprobs])
                s.step_logprobs = None
            s.out += self._piece(token)
            text = s.out.decode("utf-8", errors="replace")
            tracker.update(row, text, s.n, False)
            if row.finish is None and s.prepared.n_prompt + s.n >= self.n_ctx:  # context full: as if out of budget
                tracker.update(row, text, row.request.params.max_new_tokens, False)
            s.last = token
        if row.finish is not None:
            self._release(s, None)

    def _release(self, s: _Seq, error: BaseException | None) -> None:
        if s in self._active:
            self._active.remove(s)
            self._reserved -= s.reserve
            if error is None and self.reuse_prefix and s.prepared.chunks is None and s.fed:
                # Its cells stay as this seq id's prompt cache (a decode error or abort leaves none: after an
                # error the cells may not hold what `fed` says).
                self._cache[s.seq_id] = s.fed
            else:
                self._lc.llama_memory_seq_rm(self._memory, s.seq_id, -1, -1)
            self._free_ids.append(s.seq_id)
        if s.sampler is not None:
            self._lc.llama_sampler_free(s.sampler)
            s.sampler = None
        if error is not None:
            s.on_done(error)
        else:
            c = Completion(s.row.text, s.row.finish or "length", s.prepared.n_prompt, s.n)
            if s.row.request.logprobs is not None:
                c.logprobs = s.row.logprobs or []
            s.on_done(c)

    def _piece(self, token: int) -> bytes:
        """Raw bytes of one token, special tokens spelled out (thinking markers must survive decoding)."""
        n = self._lc.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, True)
        if n < 0:
            self._buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, True)
        return self._buf.raw[:n]


def _common_prefix(a: list[int] | None, b: list[int]) -> int:
    """How many leading tokens two lists share."""
    if not a:
        return 0
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n
