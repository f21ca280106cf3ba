"""`medgemma eval`: read a task's data, generate through the `Backend` in batches, score, summarise, report.

Protocol ("medgemma-eval"): zero-shot, greedy, no system prompt (the `plain` preset; base checkpoints keep their
completion preset since they have no chat turns), the task's own instruction and parser. Every record is appended
and flushed as its batch finishes; `--resume` picks up where a killed run stopped.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..backends.base import Completion, GenerationRequest
from ..core.messages import Prompt
from ..core.scatter import Scatter
from ..errors import BadInput, CapabilityError, MedGemmaError
from ..imaging.manifest import for_records, image_manifest, prompt_manifest
from ..prompts.presets import get_preset
from ..prompts.thinking import split_thought
from .conventions import DEFAULT_CONVENTION, get_convention
from .facts import ModelFacts
from .formats import ReadResult, read_items
from .generation import Outcome, run_batches
from .items import Unit, dataset_digest, format_options
from .kinds import expand_units
from .parsers import PARSER_VERSION, PARSERS
from .records import RecordLog, ResultCache, default_cache_dir, read_records
from .spec import TaskSpec, get_task, sample_path

if TYPE_CHECKING:
    from ..api import MedGemma

Mode = Literal["generate", "loglikelihood"]
# How log-likelihood scores are computed (recorded in every run's generation settings, and part of the cache key, so
# answers scored the old way are never reused): "fp32-head@1" = the output layer, soft-capping and log-softmax in
# float32 whatever the model's dtype (backends/loglik.py); an exact tie between options goes to the first listed, as
# lm-eval's argmax does, and the record names the tied letters.
LOGLIK_SCORING = "fp32-head@1"
# lm-eval style: score each option letter as the continuation. Completion presets already end in "Answer:".
LOGLIK_TEMPLATE = "{question}\n{options}"
LOGLIK_CHAT_SUFFIX = "\nAnswer with the letter of the correct option."


@dataclass
class EvalOptions:
    task: str
    data: str | None = None  # None: the task's shipped sample
    out: Path = Path("eval-out")
    limit: int | None = None
    batch_size: int | None = None  # None: auto
    resume: bool = False
    max_new_tokens: int | None = None
    temperature: float = 0.0
    think: bool = False
    mode: Mode = "generate"
    on_error: Literal["skip", "fail"] = "fail"
    conditions: str | None = None  # condition set name, or a comma-separated list
    image_root: str | None = None
    split: str | None = None  # the release's split (see the task's `splits`), or a Hugging Face split name
    ids: str | None = None  # file of item ids to keep (one per line, a JSON list, or a JSON object's keys)
    use_cache: bool = True
    n_boot: int = 1000
    progress: bool = True
    metric_convention: str = DEFAULT_CONVENTION  # VQA scoring rules (eval/conventions.py)


RUNS = Path("eval-runs")


def default_run_dir(task: str, resume: bool, root: Path = RUNS) -> Path:
    """A new timestamped run folder per run (as lm-eval does), so re-running never collides with an earlier run;
    with --resume, the task's latest run folder (names sort by time)."""
    if resume:
        runs = sorted(p for p in root.glob(f"{task}-*") if (p / "records.jsonl").is_file())
        legacy = root / task  # the one folder per task that earlier versions used
        if runs:
            return runs[-1]
        if (legacy / "records.jsonl").is_file():
            return legacy
        raise BadInput(f"--resume: no earlier run of {task} under {root}/; give --out RUN_DIR")
    base = root / f"{task}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    out, n = base, 1
    while out.exists():  # two runs started in the same second
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _conditions(spec: TaskSpec, opt: str | None) -> tuple[str, ...]:
    if not spec.task_kind.per_condition:
        return ()
    if opt and "," in opt or (opt and opt not in spec.condition_sets):
        return tuple(c.strip() for c in opt.split(",") if c.strip())
    return spec.conditions(opt)


def loglik_text(question: str, options: dict[str, str], chat: bool) -> str:
    """The prompt text whose continuations (the option letters) `--mode loglikelihood` scores."""
    text = LOGLIK_TEMPLATE.format(question=question.strip(), options=format_options(options))
    return text + LOGLIK_CHAT_SUFFIX if chat else text


def loglik_continuation(letter: str, completion: bool) -> str:
    """After a completion prompt's "Answer:" the letter follows a space; at the start of a model turn it stands
    alone."""
    return f" {letter}" if completion else letter


def scoring_model_options(mo: Any) -> Any:
    """`--mode loglikelihood` loads in float32 unless --dtype says otherwise, and through transformers unless
    --backend (or --upstream) says otherwise.

    Why float32: the output layer is float32 anyway (backends/loglik.py), but a bf16 transformer body still moves
    option scores by up to 0.058 nats on the demo (12 MMLU-med items, 47 of 48 pairs off HFLM fp32 by more than
    1e-3), and bf16-rounded weights are not the checkpoint's weights where those are finer (the demo's dequantised
    GGUF). Scoring is one forward pass per option, with no decoding loop for bf16 to speed up (demo: 7.2 s in fp32 vs
    8.4 s in bf16 for 48 pairs on 2 cores). Why transformers: llama.cpp here scores no log-likelihoods."""
    import dataclasses

    changes: dict[str, str] = {}
    if mo.dtype == "auto":
        changes["dtype"] = "float32"
    if mo.backend == "auto" and not mo.upstream:
        changes["backend"] = "transformers"
    return dataclasses.replace(mo, **changes) if changes else mo


def load_task_data(opts: EvalOptions, quiet: bool = False) -> tuple[TaskSpec, Path, tuple[str, ...], ReadResult]:
    """Task, data path, conditions and items; cheap, so the CLI calls it before loading a model."""
    spec = get_task(opts.task)
    if opts.mode == "loglikelihood" and not spec.task_kind.loglikelihood:
        raise BadInput(f"--mode loglikelihood is for multiple-choice tasks; {spec.name!r} is {spec.kind}")
    data_path = Path(opts.data) if opts.data else Path(str(sample_path(spec)))
    conditions = _conditions(spec, opts.conditions)
    from .formats import read_ids

    read = read_items(
        spec,
        data_path,
        opts.on_error,
        Path(opts.image_root) if opts.image_root else None,
        conditions,
        opts.limit,
        split=opts.split,
        ids=read_ids(Path(opts.ids)) if opts.ids else None,
    )
    if not quiet:
        for msg in read.errors:
            print(f"skipped: {msg}", file=sys.stderr)
        for msg in read.warnings:
            print(f"warning: {msg}", file=sys.stderr)
    return spec, data_path, conditions, read


def run_eval(
    mg: MedGemma | None,
    opts: EvalOptions,
    scatter: Scatter | None = None,
    load: Callable[[], MedGemma] | None = None,
) -> dict[str, Any]:
    """Run (or resume) one evaluation and write records, summary and reports under `opts.out`.

    With `scatter` and `load` (`eval --workers/--ray`) the model is never loaded here (`mg` may be None): a worker
    loads it with `load` and sends back its `ModelFacts` (the run's identity, preset and choices), then workers
    generate the pending questions and build the manifests of cached answers; parsing, scoring and every record
    are written here, as in one process."""
    from .report import write_reports

    spec, data_path, conditions, read = load_task_data(opts)
    convention = get_convention(opts.metric_convention, spec.task_kind)
    units = expand_units(spec, read.items, conditions)
    if not units:
        raise BadInput(f"{data_path}: no questions to ask (no labels for the chosen conditions?)")
    workers = scatter is not None and load is not None
    if workers:
        from .scaled import describe

        assert scatter is not None and load is not None
        facts = describe(scatter, load)
    elif mg is not None:
        facts = ModelFacts.of(mg)
    else:
        raise ValueError("run_eval needs a model, or workers (scatter and load) that load it")
    if opts.mode == "loglikelihood" and not facts.loglikelihood:
        raise CapabilityError(f"backend {facts.model['backend']!r} cannot score log-likelihoods")
    if any(it.images for it in read.items) and not facts.multimodal:
        raise CapabilityError(f"task {spec.name!r} has images but model {facts.model['name']!r} is text-only")

    preset = get_preset(facts.preset)
    max_new = opts.max_new_tokens or (spec.think_max_new_tokens if opts.think else spec.max_new_tokens)
    if max_new <= 0:
        raise BadInput("--max-new-tokens must be positive")
    generation = {
        "mode": opts.mode,
        "preset": f"{preset.name}@{preset.version}",
        "max_new_tokens": max_new,
        "temperature": opts.temperature,
        "think": opts.think,
        "stop": list(preset.stop),
    }
    if opts.mode == "loglikelihood":
        generation["scoring"] = LOGLIK_SCORING
    model = facts.model
    # Everything that could change an answer: the cache and --resume refuse to mix runs that differ in any of it.
    config = {
        "task": spec.label,
        "prompt_sha256": hashlib.sha256(spec.prompt.encode()).hexdigest()[:16],
        "model_fingerprint": model["fingerprint"],
        "generation": generation,
        "conditions": list(conditions),
    }

    out = Path(opts.out)
    rec_path = out / "records.jsonl"
    # The cache keeps raw answers and parses them again (a parser change applies to them); a run folder keeps parsed
    # records, so --resume also refuses records parsed under another parser protocol.
    run_config = {**config, "parser_version": PARSER_VERSION, "metric_convention": convention.label}
    _check_out_dir(out, rec_path, run_config, opts.resume)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(run_config, indent=2, sort_keys=True))
    log = RecordLog(rec_path, resume=opts.resume)
    cache = ResultCache(default_cache_dir(), config) if opts.use_cache else None
    n_resumed = sum(u.key in log.done for u in units)
    pending = [u for u in units if u.key not in log.done]
    parser = PARSERS[spec.parser]
    primed = preset.mode == "completion" and spec.parser != "report"

    manifests: dict[str, list[dict[str, Any]] | None] = {}  # unit key -> what the model saw (imaging/manifest.py)
    records_root = str(Path(data_path).parent)

    def record(o: Outcome[Unit]) -> dict[str, Any]:
        u = o.job
        base = {
            "key": u.key,
            "item_id": u.item.id,
            "condition": u.condition,
            "prompt_hash": u.prompt_hash,
            "gold": u.gold,
            "answer_type": u.item.answer_type,
            "seconds": round(o.seconds, 4),
            "images": manifests.pop(u.key, None),
        }
        if o.completion is None:
            return {
                **base,
                "raw": None,
                "thought": None,
                "parsed": None,
                "correct": None,
                "score": None,
                "error": o.error,
                "finish_reason": None,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
        split = split_thought(o.completion.text)
        answer = split.answer
        if primed:
            # A base model's completion prompt ends in "Answer:", so what it writes *is* its final answer.
            answer = f"Final Answer: {answer}"
        parsed = o.completion.text if opts.mode == "loglikelihood" else parser(answer, u.item.options)
        scored_as = spec.task_kind.score(u, parsed, convention)
        correct, score = scored_as.correct, scored_as.score
        if scored_as.closed is not None:  # VQA: which questions count as closed is the convention's call
            base["closed"] = scored_as.closed
        scored = (
            {"loglikelihoods": o.completion.scores, "tied": o.completion.tied}
            if isinstance(o.completion, ScoredOptions)
            else {}
        )
        return {
            **base,
            **scored,
            "raw": o.completion.text,
            "thought": split.thought,
            "parsed": parsed,
            "correct": correct,
            "score": score,
            "error": None,
            "finish_reason": o.completion.finish_reason,
            "prompt_tokens": o.completion.prompt_tokens,
            "completion_tokens": o.completion.completion_tokens,
        }

    requests = UnitRequests(opts.mode, opts.think, max_new, opts.temperature, preset.name, records_root)
    # Cached answers are raw model text: parse and score them again, so a parser fix applies to them too. With
    # workers, a cached answer's images are read by a worker (the driver has no model to read them with) and its
    # record is written when that manifest comes back.
    n_cached = 0
    cached_later: dict[str, tuple[Completion, float]] = {}
    if cache is not None:
        hits = []
        for u in pending:
            c = cache.get(u.key, u.prompt_hash)
            if c is not None:
                fields = (c["raw"], c["finish_reason"], c["prompt_tokens"], c["completion_tokens"])
                done = (
                    ScoredOptions(*fields, scores=c["loglikelihoods"], tied=c.get("tied") or [])
                    if c.get("loglikelihoods") is not None
                    else Completion(*fields)
                )
                if workers and u.item.images:
                    cached_later[u.key] = (done, c["seconds"])
                    continue
                manifests[u.key] = requests.seen(mg, u) if u.item.images else []
                hits.append({**record(Outcome(u, done, None, c["seconds"])), "cached": True})
        if hits:
            log.append(hits)
        n_cached = len(hits) + len(cached_later)
    later = [u for u in pending if u.key in cached_later]
    pending = [u for u in pending if u.key not in log.done and u.key not in cached_later]

    def on_cached(us: list[Unit]) -> None:
        recs = [record(Outcome(u, cached_later[u.key][0], None, cached_later[u.key][1])) for u in us]
        log.append([{**r, "cached": True} for r in recs])

    def on_batch(outs: list[Outcome[Unit]]) -> None:
        if opts.on_error == "fail":
            bad = next((o for o in outs if o.error), None)
            if bad is not None:
                raise BadInput(f"{bad.job.item.location}: {bad.error}")
        recs = [record(o) for o in outs]
        log.append(recs)
        if cache is not None:
            cache.put([r for r in recs if r["error"] is None])

    # Requests handed to the backend at once; it decodes up to `capabilities.max_batch_size` of them together (set
    # when the model is loaded: `medgemma eval` loads with its --batch-size).
    batch_size = opts.batch_size or facts.auto_batch_size(images=any(u.item.images for u in pending))
    t0 = time.perf_counter()
    try:
        if workers:
            from .scaled import generate_scattered

            assert scatter is not None and load is not None
            gen_seconds = generate_scattered(
                scatter, load, requests, pending, batch_size, manifests, on_batch, later, on_cached
            )
        else:
            assert mg is not None
            letters_of: dict[int, list[str]] = {}  # request id -> its option letters (log-likelihood mode)

            def build(u: Unit) -> GenerationRequest:
                req, manifests[u.key] = requests.build(mg, u, letters_of)
                return req

            backend = _LoglikAdapter(mg.backend, letters_of) if opts.mode == "loglikelihood" else mg.backend
            gen_seconds = run_batches(
                backend, pending, build, on_batch, batch_size, sort_key=lambda u: u.sort_length, progress=opts.progress
            )
    finally:
        log.close()
        if cache is not None:
            cache.close()
    wall = time.perf_counter() - t0

    records, _ = read_records(rec_path)
    by_key = {r["key"]: r for r in records}
    ordered = [by_key[u.key] for u in units if u.key in by_key]
    run_info = {
        "model": model,
        "metric_convention": convention.as_dict(),
        "generation": generation,
        "conditions": list(conditions),
        "dataset": {
            "path": str(data_path),
            "sha256": dataset_digest(data_path),
            "items": len(read.items),
            "questions": len(units),
            "malformed_rows": len(read.errors),
            "rows_not_used": read.skipped,
            "rows_skipped": read.skip_reasons,
            "warnings": read.warnings,
            **read.selection,
            "limit": opts.limit,
            "sample": opts.data is None,
        },
        "timing": {
            "generated": len(pending),
            "resumed": n_resumed,
            "from_cache": n_cached,
            "generate_seconds": round(gen_seconds, 3),
            "wall_seconds": round(wall, 3),
            "items_per_second": round(len(pending) / gen_seconds, 3) if gen_seconds > 0 else None,
            "batch_size": batch_size,
        },
    }
    return write_reports(spec, ordered, run_info, out, n_boot=opts.n_boot)


def _check_out_dir(out: Path, rec_path: Path, config: dict[str, Any], resume: bool) -> None:
    if resume:
        run_json = out / "run.json"
        if run_json.exists() and json.loads(run_json.read_text()) != config:
            raise BadInput(f"{out}: --resume with a different model, task or generation settings than the run there")
    elif rec_path.exists() and rec_path.stat().st_size > 0:
        raise BadInput(f"{out}: already holds records; pass --resume to continue it, or choose another --out")


@dataclass(frozen=True)
class UnitRequests:
    """How a question becomes its request: picklable, so that a worker process builds the same request as the
    driver would (`eval --workers/--ray`)."""

    mode: Mode
    think: bool
    max_new_tokens: int
    temperature: float
    preset: str
    records_root: str

    def build(
        self, mg: MedGemma, u: Unit, letters_of: dict[int, list[str]]
    ) -> tuple[GenerationRequest, list[dict[str, Any]]]:
        """The request and the manifest of what the model sees; in log-likelihood mode the option letters are noted
        in `letters_of` for `_LoglikAdapter`."""
        preset = get_preset(self.preset)
        if self.mode == "loglikelihood":
            text = loglik_text(u.item.question, u.item.options, chat=preset.mode == "chat")
            req = mg.request(text, u.item.images, max_new_tokens=1, preset=preset)
            letters_of[id(req)] = list(u.item.options)
        else:
            req = mg.request(
                u.text,
                u.item.images,
                think=self.think,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                preset=preset,
            )
        return req, for_records(prompt_manifest(req.prompt), self.records_root)

    def seen(self, mg: MedGemma | None, u: Unit) -> list[dict[str, Any]] | None:
        """The manifest of a cached answer's images, read again (None if they no longer read)."""
        if mg is None:
            return None
        try:
            return for_records(image_manifest(mg.media(u.item.images)), self.records_root)
        except MedGemmaError:
            return None


@dataclass
class ScoredOptions(Completion):
    """The log-likelihood "completion": the best letter as text, every option's score, and the letters that tied for
    the best score (empty when one option is strictly best)."""

    scores: dict[str, float] = field(default_factory=dict)
    tied: list[str] = field(default_factory=list)


def pick_option(scores: dict[str, float]) -> tuple[str, list[str]]:
    """(best letter, tied letters): the highest score; an exact tie goes to the first listed option (lm-eval's
    argmax), and every letter sharing that score is reported. With float32 scores a tie means equal sums of
    float32 log-probabilities, which real prompts practically never give; bf16 logits tied often (issue #34).

    >>> pick_option({"A": -2.0, "B": -1.5, "C": -1.5})
    ('B', ['B', 'C'])
    """
    best = max(scores.values())
    tied = [k for k, v in scores.items() if v == best]
    return tied[0], (tied if len(tied) > 1 else [])


class _LoglikAdapter:
    """Presents log-likelihood scoring as `generate`: the "completion" of each request is the best option letter."""

    def __init__(self, backend: Any, letters_of: dict[int, list[str]]) -> None:
        self.backend = backend
        self.info = backend.info
        self._letters_of = letters_of

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        pairs: list[tuple[Prompt, str]] = []
        spans: list[tuple[int, list[str]]] = []
        for r in requests:
            letters = self._letters_of.pop(id(r))
            spans.append((len(pairs), letters))
            pairs.extend((r.prompt, loglik_continuation(x, r.prompt.is_completion)) for x in letters)
        # The run's batch size counts forward-pass rows (pairs), so halving it after out-of-memory really shrinks them.
        scores = self.backend.loglikelihood(pairs, batch_size=len(requests))
        out: list[Completion] = []
        for start, letters in spans:
            by_letter = dict(zip(letters, scores[start : start + len(letters)]))
            best, tied = pick_option(by_letter)
            out.append(ScoredOptions(best, "stop", 0, 0, scores=by_letter, tied=tied))
        return out
