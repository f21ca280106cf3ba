"""JSON-schema-constrained decoding for the transformers backend, on llguidance.

Why llguidance (not xgrammar or outlines): a single Rust wheel with no Python dependencies (xgrammar pins torch and
builds kernels; outlines pulls a model-integration stack), a mask per step in tens of microseconds whatever the
vocabulary (it walks the token trie lazily instead of precompiling per-state masks), and the widest JSON-schema
coverage of the three (it is what llama.cpp and vLLM use for `%llguidance`/`guidance` grammars). A feature it does
not implement is reported by name when the schema is compiled, so callers refuse it before any decoding.

The answer is compact JSON (no free whitespace): a random or weak model otherwise can emit whitespace forever.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from ..errors import BadInput

# Compact separators, no free whitespace: every allowed token makes progress through the schema.
_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
# {"type": "json_object"}: any JSON object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def grammar_for(schema: dict[str, Any]) -> str:
    """The llguidance grammar of `schema`; `BadInput` naming what the engine cannot honour (a 400 in `serve`)."""
    import llguidance

    if not isinstance(schema, dict):
        raise BadInput("JSON schema must be an object")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=_OPTIONS)  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        raise BadInput(f"JSON schema not accepted: {str(e).splitlines()[0][:300]}") from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise BadInput(f"JSON schema not supported: {_short(error)}")
    return grammar


def check_schema(schema: Any) -> dict[str, Any]:
    """`schema` if constrained decoding can honour it; else `BadInput` naming the unsupported feature."""
    grammar_for(schema)
    return dict(schema)


def validate_answer(text: str, schema: dict[str, Any], finish_reason: str | None) -> tuple[Any, str | None]:
    """(value, None) when `text` is JSON valid under `schema`, else (None, why). Run after constrained decoding
    too: an answer cut at its token limit is a prefix of JSON, not JSON, and an upstream may ignore the schema."""
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError:
        why = "the answer was cut at the token limit" if finish_reason == "length" else "not JSON"
        return None, f"{why}; raise --max-new-tokens or bound the schema (maxLength, maxItems)"
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if problems:
        return None, f"answer does not validate: {problems[0].message[:200]}"
    return value, None


def _short(error: str) -> str:
    """The engine's message without its grammar dump: the first line, bounded."""
    line = error.strip().splitlines()[0] if error.strip() else "invalid schema"
    return line[:300]


@lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer: Any, n_vocab: int, eos: tuple[int, ...]) -> Any:
    """Building the token trie costs ~1 s for Gemma's 262k vocabulary: once per loaded tokenizer."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=list(eos))


class RowConstraint:
    """One answer's matcher: which tokens may come next, and the tokens that came. Engine-neutral (numpy).

    Once the JSON is complete (the matcher stopped) or the matcher failed, only an end of turn (`stop_ids`) may
    follow, and the matcher is not fed again (a finished row of a static batch then decodes padding)."""

    def __init__(self, ll_tokenizer: Any, schema: dict[str, Any], stop_ids: list[int]) -> None:
        import llguidance

        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar_for(schema), log_level=0)
        self.stop_ids = list(stop_ids)

    @property
    def done(self) -> bool:
        return bool(self.matcher.is_stopped() or self.matcher.is_error())

    def allowed(self, n: int) -> Any:
        """A boolean array over `n` logits: the tokens that keep the answer valid."""
        import numpy as np

        if self.done:
            mask = np.zeros(n, dtype=bool)
            mask[[t for t in self.stop_ids if t < n]] = True
            return mask
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[:n].astype(bool)
        if len(allowed) < n:  # logits wider than the vocabulary (padded output layers): the extras never fit
            allowed = np.concatenate([allowed, np.zeros(n - len(allowed), dtype=bool)])
        return allowed

    def accept(self, token: int) -> None:
        if not self.done:
            self.matcher.consume_token(token)


class ThinkingConstraint:
    """A thinking row: the thought decodes free, the answer under its schema (`answer`, or free when None).

    Asked to think under a schema, the model is put in its thought at once (its open marker is the only first
    token): the answer's start is then unambiguous, the one token after the close marker, and a model that has
    nothing to think about closes the thought straight away. Without a schema the model may skip the thought.
    Inside the thought the end of turn is masked (the answer must still come) and so is a second open marker; after
    `max_thought_tokens` thought tokens only the close marker may come: a budget that a random or looping model
    cannot overrun, and the only way such a model ever reaches its answer."""

    def __init__(
        self,
        answer: RowConstraint | None,
        markers: tuple[int, int],
        stop_ids: list[int],
        max_thought_tokens: int | None = None,
    ) -> None:
        self.answer = answer
        self.open_id, self.close_id = markers
        self.stop_ids = list(stop_ids)
        self.max_thought_tokens = max_thought_tokens
        self.phase = "start"  # start -> thought -> answer
        self.thought_tokens = 0

    @property
    def done(self) -> bool:
        return self.phase == "answer" and (self.answer is None or self.answer.done)

    def allowed(self, n: int) -> Any:
        import numpy as np

        if self.phase == "answer":
            return self.answer.allowed(n) if self.answer is not None else np.ones(n, dtype=bool)
        if self.phase == "start" and self.answer is not None:
            return self._only(n, self.open_id)
        if self.phase == "thought" and self.max_thought_tokens is not None:
            if self.thought_tokens >= self.max_thought_tokens:
                return self._only(n, self.close_id)
        mask = np.ones(n, dtype=bool)
        if self.phase == "thought":
            mask[[t for t in [*self.stop_ids, self.open_id] if t < n]] = False
        return mask

    def accept(self, token: int) -> None:
        if self.phase == "start":
            self.phase = "thought" if token == self.open_id else "answer"
            if self.phase == "answer" and self.answer is not None:
                self.answer.accept(token)
        elif self.phase == "thought":
            if token == self.close_id:
                self.phase = "answer"
            else:
                self.thought_tokens += 1
        elif self.answer is not None:
            self.answer.accept(token)

    @staticmethod
    def _only(n: int, token: int) -> Any:
        import numpy as np

        mask = np.zeros(n, dtype=bool)
        mask[token] = True
        return mask


class JsonSchemaLogits:
    """A transformers logits processor: row i's scores are masked to the tokens its schema allows next.

    Rows with no schema (`None`) are left alone, unless they think under a thought budget. `thoughts[i]`: None for
    a row that does not think, else its thought budget (0 = none), the thought then decoding free before the
    constrained answer (`ThinkingConstraint`, which needs the thought `markers`). Feeds each row's newest token to
    its matcher, so the batch must keep its rows in place (no pruning)."""

    def __init__(
        self,
        tokenizer: Any,
        n_vocab: int,
        stop_ids: list[int],
        schemas: list[dict[str, Any] | None],
        thoughts: list[int | None] | None = None,
        markers: tuple[int, int] | None = None,
    ):
        tok = _ll_tokenizer(tokenizer, n_vocab, tuple(stop_ids))
        self.rows: list[RowConstraint | ThinkingConstraint | None] = []
        for schema, budget in zip(schemas, thoughts or [None] * len(schemas)):
            answer = None if schema is None else RowConstraint(tok, schema, stop_ids)
            if budget is None or markers is None or (answer is None and budget == 0):
                self.rows.append(answer)
            else:
                self.rows.append(ThinkingConstraint(answer, markers, stop_ids, budget or None))
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for i, row in enumerate(self.rows):
            if row is None:
                continue
            if self.started:
                row.accept(int(input_ids[i, -1]))
            mask = torch.from_numpy(~row.allowed(scores.shape[1])).to(scores.device)
            scores[i] = scores[i].masked_fill(mask, float("-inf"))
        self.started = True
        return scores
