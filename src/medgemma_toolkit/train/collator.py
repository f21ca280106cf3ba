"""Turn `Example`s into training batches, with the loss on the whole conversation or on the answer only.

Each example is rendered exactly as inference renders it: the prompt preset builds the messages, images go through
`imaging.load_parts` / `to_model_image` at the model's input size, and the model's own chat template (or Gemma's turn
format) renders the text.

`loss_on="conversation"` (the `notebook` recipe) is Google's fine-tuning notebook's collate step: the conversation,
answer included, rendered with `add_generation_prompt=False` and stripped, is passed to the processor as the
notebook passes it (its defaults), and every token is a label except padding, `<start_of_image>` and the image soft
tokens (`<end_of_image>` stays, as in the notebook).

`loss_on="answer"` (the `answer-only` recipe): the prompt (with its image soft tokens) and the answer are tokenised
separately and concatenated, so the boundary is exact: every prompt position, every image token and all padding get
label -100.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..core.messages import ImagePart, Message, Part, Prompt, TextPart
from ..errors import BadInput, MedGemmaError
from ..imaging import ImageOptions, load_parts, to_model_image
from ..prompts.gemma_format import render_gemma_chat
from ..prompts.presets import PromptPreset
from .data import Example, ImageRef

IGNORE = -100
END_OF_TURN = "<end_of_turn>"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    token_type_ids: list[int] | None
    images: list[Image.Image]
    pixel_values: Any  # tensor or None


class SFTCollator:
    """Callable batch builder for the trainer; dataset rows are `{"index": i}` into `examples`."""

    def __init__(
        self,
        examples: list[Example],
        processor: Any,
        tokenizer: Any,
        preset: PromptPreset,
        image_size: int | None,
        max_length: int | None = None,
        image_options: ImageOptions = ImageOptions(),
        cache_bytes: int = 256 * 1024**2,
        loss_on: str = "answer",
    ) -> None:
        self.examples = examples
        self.loss_on = loss_on
        self.processor = processor
        self.tokenizer = tokenizer
        self.preset = preset
        self.image_size = image_size
        self.max_length = max_length
        self.image_options = image_options
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
        # The notebook's masked ids: padding, <start_of_image> and the image soft token.
        tok = tokenizer
        self.notebook_masked = {self.pad_id}
        for name in ("boi_token", "image_token"):
            t = getattr(tok, name, None)
            tid = tok.convert_tokens_to_ids(t) if isinstance(t, str) else None
            if isinstance(tid, int) and tid != getattr(tok, "unk_token_id", None):
                self.notebook_masked.add(tid)
        # Never-trained-on ids: also masked inside answers, should an answer contain them.
        self.masked_ids = {self.pad_id}
        # (transformers 5: the processor's image token is <start_of_image>, the tokenizer's the soft token.)
        for owner in (processor, tokenizer):
            for name in ("image_token_id", "boi_token_id", "eoi_token_id"):
                tid = getattr(owner, name, None)
                if isinstance(tid, int):
                    self.masked_ids.add(tid)
        # Decoded model-ready images, kept while they fit the budget: decoding a DICOM every step is wasted work.
        self._cache: OrderedDict[str, list[Part]] = OrderedDict()
        self._cache_budget = cache_bytes
        self._cache_used = 0

    # -- images ----------------------------------------------------------------------------------------------
    def _media(self, ref: ImageRef, origin: str) -> list[Part]:
        if self.processor is None or self.image_size is None:
            raise BadInput(f"{origin}: the model is text-only and cannot be trained on images")
        if isinstance(ref, Image.Image):
            return [ImagePart(to_model_image(ref, self.image_size))]
        if ref in self._cache:
            self._cache.move_to_end(ref)
            return self._cache[ref]
        try:
            parts = load_parts(ref, self.image_options, self.image_size)
        except MedGemmaError as e:
            raise BadInput(f"{origin}: {e}") from None
        size = sum(p.image.width * p.image.height * 3 for p in parts if isinstance(p, ImagePart))
        if size <= self._cache_budget:
            self._cache[ref] = parts
            self._cache_used += size
            while self._cache_used > self._cache_budget and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cache_used -= sum(p.image.width * p.image.height * 3 for p in old if isinstance(p, ImagePart))
        return parts

    # -- rendering ---------------------------------------------------------------------------------------------
    def prompt_for(self, ex: Example) -> Prompt:
        """The prompt inference would build for this example (without the answer)."""
        if ex.turns:
            messages = []
            for t in ex.turns:
                parts: list[Part] = []
                for p in t.parts:
                    parts.extend([TextPart(p)] if isinstance(p, str) else self._media(p.ref, ex.origin))
                messages.append(Message(t.role, parts))  # type: ignore[arg-type]
            return Prompt(messages=messages)
        media = [part for ref in ex.images for part in self._media(ref, ex.origin)]
        return self.preset.build(ex.question, media, system=ex.system)

    def render(self, prompt: Prompt, answer: str) -> tuple[str, str]:
        """(prompt text, answer text) such that prompt + answer is what the template renders for the whole turn."""
        if prompt.is_completion:
            # Base models: the answer follows "Answer:" and ends where the preset's stop strings cut.
            return prompt.text or "", f" {answer}\n\n"
        if not self.template:
            bos = self.tokenizer.bos_token or ""
            return render_gemma_chat(prompt.messages, bos=bos), f"{answer}{END_OF_TURN}\n"
        owner = self.processor if self.processor is not None else self.tokenizer
        hf = [m.to_hf() for m in prompt.messages]
        head = owner.apply_chat_template(hf, tokenize=False, add_generation_prompt=True)
        full = owner.apply_chat_template(
            hf + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}], tokenize=False
        )
        if full.startswith(head) and len(full) > len(head):
            return head, full[len(head) :]
        return head, f"{answer}{END_OF_TURN}\n"

    def render_conversation(self, prompt: Prompt, answer: str) -> str:
        """The whole conversation as the notebook renders it: template without generation prompt, stripped."""
        if prompt.is_completion:
            return f"{prompt.text or ''} {answer}"
        if not self.template:
            bos = self.tokenizer.bos_token or ""
            head = render_gemma_chat(prompt.messages, bos=bos)
            return f"{head}{answer}{END_OF_TURN}".strip()
        owner = self.processor if self.processor is not None else self.tokenizer
        hf = [m.to_hf() for m in prompt.messages]
        hf.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return owner.apply_chat_template(hf, tokenize=False, add_generation_prompt=False).strip()

    def encode_conversation(self, ex: Example) -> Encoded:
        prompt = self.prompt_for(ex)
        text = self.render_conversation(prompt, ex.answer)
        images = prompt.all_images()
        if self.processor is not None:
            enc = self.processor(text=[text], images=[images] if images else None, return_tensors="pt")
            ids = enc["input_ids"][0].tolist()
            tt = enc["token_type_ids"][0].tolist() if "token_type_ids" in enc else None
            pixels = enc.get("pixel_values")
        else:
            ids = self.tokenizer(text)["input_ids"]
            tt, pixels = None, None
        if self.max_length is not None and len(ids) > self.max_length:
            raise BadInput(f"{ex.origin}: the conversation is {len(ids)} tokens, over --max-length {self.max_length}")
        labels = [IGNORE if t in self.notebook_masked else t for t in ids]
        return Encoded(ids, labels, tt, images, pixels)

    def encode(self, ex: Example) -> Encoded:
        if self.loss_on == "conversation":
            return self.encode_conversation(ex)
        prompt = self.prompt_for(ex)
        head, tail = self.render(prompt, ex.answer)
        images = prompt.all_images()
        # Chat-rendered text already starts with <bos>; completion text needs the tokenizer to add it.
        add_special = prompt.is_completion
        if self.processor is not None:
            enc = self.processor(
                text=[head], images=[images] if images else None, return_tensors="pt", add_special_tokens=add_special
            )
            ids = enc["input_ids"][0].tolist()
            tt = enc["token_type_ids"][0].tolist() if "token_type_ids" in enc else None
            pixels = enc.get("pixel_values")
        else:
            ids = self.tokenizer(head, add_special_tokens=add_special)["input_ids"]
            tt, pixels = None, None
        answer_ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        if self.max_length is not None:
            if len(ids) >= self.max_length:
                raise BadInput(
                    f"{ex.origin}: the prompt is {len(ids)} tokens, not below --max-length {self.max_length}"
                )
            answer_ids = answer_ids[: self.max_length - len(ids)]
        labels = [IGNORE] * len(ids) + [t if t not in self.masked_ids else IGNORE for t in answer_ids]
        if tt is not None:
            tt = tt + [0] * len(answer_ids)
        return Encoded(ids + answer_ids, labels, tt, images, pixels)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        encs = [self.encode(self.examples[int(f["index"])]) for f in features]
        width = max(len(e.input_ids) for e in encs)
        pad = lambda seq, v: seq + [v] * (width - len(seq))  # noqa: E731 - right padding for training
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([pad(e.input_ids, self.pad_id) for e in encs]),
            "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in encs]),
            "labels": torch.tensor([pad(e.labels, IGNORE) for e in encs]),
        }
        if any(e.token_type_ids is not None for e in encs):
            batch["token_type_ids"] = torch.tensor([pad(e.token_type_ids or [0] * len(e.input_ids), 0) for e in encs])
        pixels = [e.pixel_values for e in encs if e.pixel_values is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels, dim=0)
        return batch
