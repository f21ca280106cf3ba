"""Hugging Face transformers backend: Gemma 3 text (`Gemma3ForCausalLM`) and multimodal
(`Gemma3ForConditionalGeneration`) checkpoints, real batching with left padding, GGUF files via `gguf_file=`."""

from __future__ import annotations

import copy
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..core.messages import IMAGE_PLACEHOLDER, Prompt
from ..core.model import ModelHint
from ..core.options import LoadOptions
from ..errors import BadInput, CapabilityError
from ..models.checkpoint import check_quantize, load_hf_model, load_processing, quantization_config
from ..prompts.gemma_format import render_gemma_chat
from ..runtime.bf16_weights import MODE as BF16_WEIGHTS
from ..runtime.bf16_weights import keep_bf16_weights
from ..runtime.cpu_vision import VisionPath, check_vision_runtime
from ..runtime.cpu_vision import install as install_vision
from ..runtime.memory import call_or_oom, release_memory
from ..runtime.norms import fuse_rms_norms
from ..runtime.placement import checkpoint_params, inference_placement, model_bytes, visible_gpus
from ..runtime.torch_setup import pick_device_dtype
from .base import Backend, Capabilities, Completion, DeltaCallback, GenerationRequest
from .decoding import RowState, TokenStepper
from .loglik import scored_hidden_states, token_logprobs_fp32

if TYPE_CHECKING:
    from transformers import BatchEncoding, BatchFeature

log = logging.getLogger(__name__)

# Automatic batch sizes (`LoadOptions.max_batch_size` 0, `_auto_batch`): rows decoded at once on an accelerator, on a
# CPU where memory allows, and the positions per row the CPU's memory check assumes (an MCQ prompt and its answer).
GPU_BATCH = 32
CPU_BATCH = 64
AUTO_ROW_TOKENS = 1024


class TransformersBackend(Backend):
    """Loads once; `generate` batches requests that share sampling settings."""

    def __init__(
        self, path: str | Path, info_hint: ModelHint | dict[str, Any], options: LoadOptions | None = None
    ) -> None:
        import torch
        from transformers import AutoConfig

        self.torch = torch
        self.options = options or LoadOptions()
        self.path = Path(path)
        gguf_file = None
        if self.path.is_file():  # a .gguf file: transformers dequantises it
            gguf_file, load_dir = self.path.name, str(self.path.parent)
        else:
            load_dir = str(self.path)
        config = (
            AutoConfig.from_pretrained(load_dir, gguf_file=gguf_file)
            if gguf_file
            else AutoConfig.from_pretrained(load_dir)
        )
        width = getattr(config.get_text_config(), "hidden_size", None)
        # --dtype bfloat16-weights: float32 arithmetic on bf16 weights, for CPUs without bf16 instructions
        # (runtime/bf16_weights.py); `self.dtype` is the arithmetic's, `weights_dtype` what the weights are held in.
        self.bf16_weights = self.options.dtype == BF16_WEIGHTS
        compute = "float32" if self.bf16_weights else self.options.dtype
        self.device, self.dtype = pick_device_dtype(self.options.device, compute, width, inference=True)
        quantize = check_quantize(self.options.quantize)
        if self.bf16_weights and self.device.type != "cpu":
            raise BadInput(f"--dtype {BF16_WEIGHTS} runs on a CPU; on {self.device.type} use --dtype bfloat16")
        if self.bf16_weights and quantize != "none":
            raise BadInput(
                f"--dtype {BF16_WEIGHTS} keeps the stored bf16 weights: it cannot take --quantize {quantize}"
            )
        weights_dtype = torch.bfloat16 if self.bf16_weights else self.dtype
        check_vision_runtime(self.options.vision_runtime)  # a bad name fails before the weights load
        dtype_name = BF16_WEIGHTS if self.bf16_weights else str(self.dtype).replace("torch.", "")
        weights_name = str(weights_dtype).replace("torch.", "")
        weights = None if gguf_file else model_bytes(checkpoint_params(self.path), weights_name, quantize)
        # Free memory matters only when choosing between one GPU and several ("cuda" without an index).
        gpus = visible_gpus(measure=self.device.index is None) if self.device.type == "cuda" else []
        self.placement = inference_placement(str(self.device), quantize, gpus, weights)
        if self.placement.note:
            log.warning(self.placement.note)
        kwargs: dict[str, Any] = {"dtype": weights_dtype}
        quant = quantization_config(quantize, self.device)
        if quant is not None:
            kwargs["quantization_config"] = quant
        if self.placement.device_map is not None:  # straight onto the GPU(s): no host copy, never moved again
            kwargs["device_map"] = self.placement.device_map
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        self.multimodal = getattr(config, "vision_config", None) is not None
        try:
            self.model = load_hf_model(load_dir, self.multimodal, **kwargs)
            proc = load_processing(load_dir, self.multimodal, gguf_file)
        except (OSError, ValueError, KeyError) as e:
            raise BadInput(
                f"{path}: cannot load checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        self.processor, self.tokenizer = proc.processor, proc.tokenizer
        image_size = proc.image_size
        tokens_per_image = int(getattr(config, "mm_tokens_per_image", 256)) if self.multimodal else None
        template = proc.chat_template
        if self.placement.move_to is not None:
            self.model.to(self.placement.move_to)
        if self.options.adapter:
            self.model = _with_adapter(self.model, self.options.adapter, merge=quantize == "none")
        self.model.eval()
        if self.bf16_weights:
            keep_bf16_weights(self.model)
        if self.device.type == "cpu":  # one kernel instead of seven element-wise passes per norm (runtime/norms.py)
            fuse_rms_norms(self.model)
        # A bf16 CPU model: linear layers through oneDNN-packed weights (runtime/packed_linear.py): a copy beside the
        # weights for eval and batch where memory allows, else the weights replaced by their packed copies.
        self.packed_linears = self._pack_linears()
        # Inputs go where the embeddings are: the first shard of a model spread over several GPUs.
        self.input_device = self.model.get_input_embeddings().weight.device
        # The SigLIP tower through OpenVINO on CPUs (converted at the first image, cached per weights).
        self.vision: VisionPath = (
            install_vision(self.model, self.input_device, self.dtype, self.options.vision_runtime)
            if self.multimodal
            else VisionPath("torch", "text-only model")
        )
        self.tokenizer.padding_side = "left"
        self.template = template
        self.stop_ids = self._stop_token_ids()
        self.thought_markers = self._thought_marker_ids()
        # SentencePiece byte-fallback pieces ("<0x41>"): a run of them decodes as a group, so it is unstable.
        self.byte_token_ids = frozenset(
            i for t, i in self.tokenizer.get_vocab().items() if len(t) == 6 and t.startswith("<0x") and t.endswith(">")
        )
        # Greedy batches prefill in length buckets (backends/hf_buckets.py); False prefills each batch whole, padded
        # to its longest prompt (benchmarks/eval_runner.py --compare measures one against the other).
        self.bucket_prefill = True
        # Greedy batches write their KV cache into preallocated buffers (backends/hf_cache.py); False: transformers'
        # DynamicCache, grown by concatenation (for the same comparison).
        self.preallocate_cache = True
        # ... and continue with `hf_decode.greedy_steps` (no float32 logits copy, no `generate` call per segment);
        # False: a `generate` call per segment, as before.
        self.greedy_steps = True
        # A greedy text-only `generate` call of more requests than a batch decodes at most `max_batch_size` rows at
        # once and starts waiting rows as others finish (`hf_decode.decode_pruned(live_limit=...)`); False: one
        # batch after another (the same comparison).
        self.refill_batches = True
        self._count_lock = threading.Lock()
        self._count_tokenizer: Any = None
        self.info = ModelHint.of(info_hint).model_info(
            path=str(path),
            backend="transformers",
            multimodal=self.multimodal,
            image_size=image_size,
            tokens_per_image=tokens_per_image,
            has_chat_template=bool(template),
            extra={
                "device": str(self.input_device),
                "dtype": dtype_name,
                **({"quantize": quantize} if quantize != "none" else {}),
                **({"device_map": "auto"} if self.placement.device_map == "auto" else {}),
                **({"vision_tower": self.vision.runtime} if self.multimodal else {}),
                **({"packed_linears": str(self.packed_linears)} if self.packed_linears else {}),
            },
        )
        self.capabilities = Capabilities(
            max_batch_size=max(1, self.options.max_batch_size or self._auto_batch()),
            loglikelihood=True,
            images=self.multimodal,
            streaming=True,
            context_length=self._context_length(),
            logprobs=True,
            thinking_schema=self.thought_markers is not None,
            refills=self._can_refill(),
        )

    def _auto_batch(self) -> int:
        """Rows decoded at once when the caller leaves it to the backend (`max_batch_size` 0): `GPU_BATCH` on an
        accelerator; on a CPU `CPU_BATCH` when that many rows of `AUTO_ROW_TOKENS` positions keep their KV cache in a
        quarter of the memory free now (the demo: 1.2 GB; MedGemma 4B in bf16: 9 GB, so 32 on a 16-24 GB machine),
        else `GPU_BATCH`. A decode step's fixed cost per layer (small matmuls, norms, Python) is shared by more rows:
        demo eval on 2 cores, 11.1 items/s at 64 vs 9.4 at 32 (benchmarks/eval_runner.py)."""
        from ..models.footprint import available_bytes
        from .hf_cache import kv_bytes

        if self.device.type != "cpu":
            return GPU_BATCH
        need = kv_bytes(self.model.config, CPU_BATCH, AUTO_ROW_TOKENS, self.dtype.itemsize)
        free = available_bytes()
        return CPU_BATCH if free is not None and need * 4 <= free else GPU_BATCH

    def _pack_linears(self) -> str:
        """Route a bf16 CPU model's linear layers through oneDNN-packed weights; returns what was done for the load
        info ("" nothing, "N" layers packed beside their weights, "N in place"). Throughput work (eval, batch) packs a
        copy, the tied output layer included, when it takes at most a quarter of the memory free now (the demo:
        0.5 GB; MedGemma 4B: about 7.8 GB, so not on a 16-24 GB machine, whose batches and image tower need that
        memory). Every other bf16 CPU load packs in place, which adds no memory and is what makes one question's
        decode faster (`pack_linears_in_place`). `MEDGEMMA_PACK_LINEARS=0` keeps the plain layers (for side-by-side
        benchmarks). A float32 model is packed for throughput work only, as a copy, on AMD CPUs
        (`fp32_packing_pays`: MKL's float32 kernels are slow there at a decode batch's rows); bf16 weights with
        float32 arithmetic (`bfloat16-weights`) have their own layers and are left alone."""
        from ..models.footprint import available_bytes
        from ..runtime.packed_linear import (
            can_pack,
            fp32_packing_pays,
            pack_linears,
            pack_linears_in_place,
            packed_bytes,
            packing_on,
        )

        torch = self.torch
        if self.device.type != "cpu" or not packing_on():
            return ""
        fp32 = self.dtype == torch.float32 and not self.bf16_weights
        if fp32:
            if self.options.workload != "throughput" or not fp32_packing_pays():
                return ""
        elif self.dtype != torch.bfloat16 or not can_pack():
            return ""
        if self.options.workload == "throughput":
            need, free = packed_bytes(self.model, self.dtype), available_bytes()
            if free is not None and need * 4 <= free:
                return str(pack_linears(self.model, dtype=self.dtype))
            if fp32:  # a copy or nothing: in-place fp32 packing is not measured for one question's decode
                return ""
            log.info("linear layers packed in place: a copy needs %d MiB, %s free", need >> 20, free and free >> 20)
        n = pack_linears_in_place(self.model)
        return f"{n} in place" if n else ""

    def _thought_marker_ids(self) -> tuple[int, int] | None:
        """The single tokens that open and close a thought (`<unused94>`, `<unused95>`), or None when the
        vocabulary has no such tokens (then a thought cannot be told from its answer while decoding)."""
        from ..prompts.thinking import THOUGHT_CLOSE, THOUGHT_OPEN

        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in (THOUGHT_OPEN, THOUGHT_CLOSE)]
        if any(not isinstance(i, int) or i == self.tokenizer.unk_token_id for i in ids):
            return None
        return ids[0], ids[1]

    def _stop_token_ids(self) -> list[int]:
        ids = set()
        eos = self.model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        eot = self.tokenizer.convert_tokens_to_ids("<end_of_turn>")
        if isinstance(eot, int) and eot != self.tokenizer.unk_token_id:
            ids.add(eot)
        return sorted(ids)

    def _byte(self, token: int) -> bytes | None:
        """The byte a byte-fallback piece ("<0xE2>") stands for; None for other tokens (their text is their bytes)."""
        if token not in self.byte_token_ids:
            return None
        return bytes([int(self.tokenizer.convert_ids_to_tokens(token)[3:5], 16)])

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # -- prompt rendering -------------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        """The exact text fed to the tokenizer (images as `<start_of_image>`)."""
        if prompt.all_images() and not self.multimodal:
            raise CapabilityError(f"model {self.info.name!r} is text-only and cannot take images")
        if prompt.is_completion:
            return prompt.text or ""
        if not self.template:
            return render_gemma_chat(prompt.messages, bos=self.tokenizer.bos_token or "")
        hf = [m.to_hf() for m in prompt.messages]
        owner = self.processor if self.processor is not None else self.tokenizer
        return owner.apply_chat_template(hf, tokenize=False, add_generation_prompt=True)

    def _encode(self, prompts: list[Prompt], suffixes: Sequence[str] | None = None) -> BatchFeature | BatchEncoding:
        texts = [self.render(p) for p in prompts]
        if suffixes is not None:  # log-likelihood scoring: the continuation follows the rendered prompt
            texts = [t + s for t, s in zip(texts, suffixes)]
        # Chat-rendered text already starts with <bos>; completion text needs the tokenizer to add it.
        add_special = prompts[0].is_completion
        images = [p.all_images() for p in prompts]
        if self.processor is not None:
            for t, ims in zip(texts, images):
                if t.count(IMAGE_PLACEHOLDER) != len(ims):
                    raise BadInput("prompt text and images disagree: one <start_of_image> per image is needed")
            has_images = any(images)
            return self.processor(
                text=texts,
                images=images if has_images else None,
                padding=True,
                return_tensors="pt",
                add_special_tokens=add_special,
            )
        return self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=add_special)

    def _context_length(self) -> int | None:
        n = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(n) if n else None

    def count_text_tokens(self, text: str) -> int | None:
        with self._count_lock:
            return len(self._own_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def _own_tokenizer(self) -> Any:
        """A copy for counting (call under `_count_lock`): a Rust tokenizer used by two threads at once fails
        with "Already borrowed"."""
        if self._count_tokenizer is None:
            self._count_tokenizer = copy.deepcopy(self.tokenizer)
        return self._count_tokenizer

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        """Exact for text; each image counts as the processor's expansion (boi + soft tokens + eoi). Uses its own
        copy of the tokenizer: a Rust tokenizer used by two threads at once fails with "Already borrowed"."""
        text = self.render(prompt)
        expansion = getattr(self.processor, "full_image_sequence", None) if self.processor is not None else None
        if expansion and prompt.all_images():
            text = text.replace(IMAGE_PLACEHOLDER, expansion)
        with self._count_lock:
            return len(self._own_tokenizer()(text, add_special_tokens=prompt.is_completion)["input_ids"])

    # -- generation -----------------------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)

        # Seeds are per row (`hf_sampling.StepProcessor`), so rows with different seeds (the `n` choices of one
        # request) share a batch.
        def key(i: int) -> tuple[bool, bool, bool, float, float, int | None, bool, bool]:
            r = requests[i]
            p = r.params
            return (
                r.prompt.is_completion,
                bool(r.prompt.all_images()),
                p.greedy,
                p.temperature,
                p.top_p,
                p.top_k,
                r.json_schema is not None,
                r.logprobs is not None,
            )

        order = sorted(range(len(requests)), key=lambda i: (repr(key(i)), i))
        for _, group in itertools.groupby(order, key=key):
            idx = list(group)
            size = self.capabilities.max_batch_size
            live = size if len(idx) > size and self._refills(requests[idx[0]]) else None
            step = len(idx) if live else size  # refilled: one call, `size` rows decoding at a time
            for start in range(0, len(idx), step):
                chunk = idx[start : start + step]
                rows = [RowState(i, requests[i]) for i in chunk]
                done = call_or_oom(
                    # cast: mypy cannot infer a lambda with default arguments in a Callable[[], T] context
                    cast(
                        "Callable[[], list[Completion]]",
                        lambda rows=rows, live=live: self._generate_batch(rows, on_delta, live=live),
                    ),
                    f"out of memory on {self.input_device} generating for {len(rows)} requests",
                )
                for i, c in zip(chunk, done):
                    results[i] = c
        return [r for r in results if r is not None]

    def _can_refill(self) -> bool:
        from .hf_decode import can_refill  # imports transformers: only once a model is loaded

        return can_refill(self.model)

    def _refills(self, r: GenerationRequest) -> bool:
        """Whether a group of requests like `r` (greedy, plain text, no schema, thought budget or log-probabilities)
        is decoded with a refilled batch (`self.refill_batches`, and a model whose caches join)."""
        plain = r.params.greedy and r.json_schema is None and r.logprobs is None and not r.prompt.all_images()
        budget = r.think and self.thought_markers is not None and bool(r.max_thought_tokens)
        on = self.refill_batches and self.bucket_prefill and self.greedy_steps
        return bool(plain and not budget and on and self.capabilities.refills)

    def _generate_batch(
        self,
        rows: list[RowState],
        on_delta: DeltaCallback | None,
        prune: bool = True,
        bucket: bool | None = None,
        live: int | None = None,
    ) -> list[Completion]:
        """One batch through `generate`. Greedy batches drop rows that have finished as they go (`prune=False`: the
        plain static batch, for benchmarks) and prefill in length buckets (`bucket=False`: the batch whole, padded
        to its longest prompt; None: `self.bucket_prefill`); sampled, constrained or log-probability batches keep the
        static batch, with one `hf_sampling.StepProcessor` choosing each row's token (a seeded row samples the same
        text whatever its batch-mates). `live`: decode at most this many rows at once, refilling from the rest
        (`_refills` said yes for these rows)."""
        inputs = self._encode([r.request.prompt for r in rows]).to(self.input_device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        params = rows[0].request.params
        stepper = TokenStepper(rows, on_delta, self._decode, set(self.stop_ids), self.byte_token_ids)
        gen = self._generation_config(rows)
        from .hf_decode import can_prune, decode_pruned  # imports transformers: only once a model is loaded
        from .hf_sampling import StepProcessor

        schemas = [r.request.json_schema for r in rows]
        thoughts = [
            (r.request.max_thought_tokens or 0) if r.request.think and self.thought_markers else None for r in rows
        ]
        needs = any(s is not None for s in schemas) or any(t for t in thoughts)  # a schema, or a thought budget
        constrain = self._constraint(schemas, thoughts) if needs else None
        wants_logprobs = any(r.request.logprobs is not None for r in rows)
        step = None
        if constrain is not None or wants_logprobs or not params.greedy:
            # A constrained row's matcher follows its row by position: such batches keep their rows in place.
            stops = frozenset(self.stop_ids)
            step = StepProcessor(
                rows, lambda t: self._decode([t]), constrain, not params.greedy, self.input_device, stops, self._byte
            )
        with self.torch.inference_mode():
            if step is None and prune and can_prune(self.model):
                per_row = [len(r.request.prompt.all_images()) for r in rows]
                decode_pruned(
                    self.model,
                    dict(inputs),
                    gen,
                    stepper,
                    images_per_row=per_row,
                    bucket=self.bucket_prefill if bucket is None else bucket,
                    preallocate=self.preallocate_cache,
                    steps=self.greedy_steps,
                    live_limit=live,
                )
            else:
                self._decode_static(dict(inputs), gen, stepper, step)
        done = [Completion(r.text, r.finish or "length", int(n), r.tokens) for r, n in zip(rows, prompt_tokens)]
        for c, r in zip(done, rows):
            if r.request.logprobs is not None:  # entries past the last counted token (end of turn, padding) go
                c.logprobs = (r.logprobs or [])[: r.tokens]
        return done

    def _generation_config(self, rows: list[RowState]) -> Any:
        from transformers import GenerationConfig

        gen = GenerationConfig(
            max_new_tokens=max(r.request.params.max_new_tokens for r in rows),
            do_sample=False,  # sampled rows are drawn by `hf_sampling.StepProcessor`; generate takes its argmax
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        gen.temperature, gen.top_p, gen.top_k = None, None, None
        return gen

    def _constraint(self, schemas: list[dict[str, Any] | None], thoughts: list[int | None]) -> Any:
        """The logits processor that keeps each row to its JSON schema (llguidance, imported only here), a
        thinking row's schema starting after its thought (`thoughts[i]`: its budget, 0 = none; None: no thought)."""
        from .constrain import JsonSchemaLogits

        n_vocab = int(self.model.get_output_embeddings().weight.shape[0])
        return JsonSchemaLogits(self.tokenizer, n_vocab, self.stop_ids, schemas, thoughts, self.thought_markers)

    def _decode_static(self, inputs: dict[str, Any], gen: Any, stepper: TokenStepper, step: Any = None) -> None:
        """Every row stays in the batch until the last one stops (finished rows decode padding). `step`: the
        `StepProcessor` that masks, samples and records log-probabilities, if any."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from .hf_decode import Track

        rows = stepper.rows
        prompt_len = inputs["input_ids"].shape[1]
        # Nothing to stream, no stop string, no cancellation, one token limit: the hook would only count tokens, so
        # leave generation alone and read the rows once at the end (eval and batch runs).
        per_step = (
            stepper.need_text
            or any(r.request.cancelled is not None for r in rows)
            or len({r.request.params.max_new_tokens for r in rows}) > 1
        )
        hook = [Track(stepper, list(range(len(rows))), None)] if per_step else []
        extra: dict[str, Any] = {"logits_processor": LogitsProcessorList([step])} if step is not None else {}
        out = self.model.generate(
            **inputs, generation_config=gen, stopping_criteria=StoppingCriteriaList(hook), **extra
        )
        seqs = out.sequences if hasattr(out, "sequences") else out
        stepper.finish(seqs[:, prompt_len:].tolist())  # tokens the criteria did not see, rows still open

    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]], batch_size: int | None = None) -> list[float]:
        """Sum of log-probabilities of each continuation given its prompt (lm-eval's way of scoring MCQ).

        `batch_size` pairs per forward pass (default `capabilities.max_batch_size`), longest first so batches pad little.
        Left padding puts every continuation at the end of its row, so only the last k+1 positions' logits are
        needed: `logits_to_keep` spares the full-vocabulary logits of every prompt position (262k x tokens x
        pairs: ~38 GB at 32 pairs of ~450 tokens in fp32)."""
        size = max(1, batch_size or self.capabilities.max_batch_size)
        texts = [self.render(p) for p, _ in pairs]
        full_len: list[int] = []
        cont_len: list[int] = []
        for text, (_, c) in zip(texts, pairs):
            n_prompt = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            n_full = len(self.tokenizer(text + c, add_special_tokens=False)["input_ids"])
            full_len.append(n_full)
            cont_len.append(max(1, n_full - n_prompt))
        order = sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][0].all_images()), -full_len[i], i))
        scores: list[float] = [0.0] * len(pairs)
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            chunk = [pairs[i] for i in idx]
            ks = [cont_len[i] for i in idx]
            sums = call_or_oom(
                cast("Callable[[], list[float]]", lambda chunk=chunk, ks=ks: self._score_continuations(chunk, ks)),
                f"out of memory on {self.input_device} scoring {len(chunk)} continuations",
            )
            for i, v in zip(idx, sums):
                scores[i] = v
        return scores

    def _score_continuations(self, chunk: list[tuple[Prompt, str]], ks: list[int]) -> list[float]:
        torch = self.torch
        inputs = self._encode([p for p, _ in chunk], [c for _, c in chunk]).to(self.input_device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        keep = min(max(ks) + 1, inputs["input_ids"].shape[1])
        with torch.inference_mode():
            # The output layer, soft-capping and log-softmax in float32 whatever the model's dtype (backends/loglik.py).
            hidden = scored_hidden_states(self.model, dict(inputs), keep)  # (batch, keep, width)
            # Position j predicts token j+1: the kept positions but the last predict the last keep-1 tokens.
            target = inputs["input_ids"][:, inputs["input_ids"].shape[1] - keep + 1 :]
            token_lp = token_logprobs_fp32(self.model, hidden[:, :-1], target)
            sums = torch.stack([token_lp[i, -k:].sum() for i, k in enumerate(ks)])
        return [float(x) for x in sums.tolist()]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        release_memory()  # so the next model (e.g. training after a before-score) finds the GPU memory free


def _with_adapter(model: Any, adapter: str, merge: bool) -> Any:
    """`model` with the PEFT adapter at `adapter` applied (merged into plain weights when `merge`)."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError) as e:
        raise BadInput(f"{adapter}: cannot load adapter ({type(e).__name__})") from None
    return peft_model.merge_and_unload() if merge else peft_model
