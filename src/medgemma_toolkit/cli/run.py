"""`ask`, `chat`, `preview` and `models`: running a model on text and images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from ..api import Answer, MedGemma
    from ..backends.base import GenerationRequest

from . import app
from .common import IMAGE_DEFAULTS, MODEL_DEFAULTS, ImageArgs, ModelOptions, PresetOpt, check_sources, option_groups
from .sr import SrOpt, StowOpt


@app.command()
@option_groups(mo=ModelOptions, img=ImageArgs)
def ask(
    question: Annotated[
        Optional[str],
        typer.Argument(help="The question (use quotes); with --prior/--current, default: the notebook's instruction"),
    ] = None,
    mo: ModelOptions = MODEL_DEFAULTS,
    image: Annotated[
        Optional[list[str]],
        typer.Option(
            "--image",
            "-i",
            help="Image file (PNG/JPEG/TIFF/BMP/WebP/DICOM), DICOM series directory, whole-slide image or dicomweb:// URI; repeat for several",
        ),
    ] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt (replaces the preset's)")] = None,
    think: Annotated[
        bool, typer.Option("--think", help="Ask thinking-capable models to reason first; the thought is shown apart")
    ] = False,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Default: the preset's")] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy (MedGemma's default)")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[Optional[int], typer.Option()] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (answer, thought, model, preset, timings, tokens)")
    ] = False,
    instruction: Annotated[
        Optional[str],
        typer.Option(
            help="Text before a CT/MR volume's or slide's images (the question goes after them); default: the preset's"
        ),
    ] = None,
    show_prompt: Annotated[
        bool,
        typer.Option(
            "--show-prompt",
            help="Print the exact rendered prompt (chat template applied, one <start_of_image> per image) and exit; loads no weights when the processor suffices",
        ),
    ] = False,
    prior: Annotated[
        Optional[str],
        typer.Option(help="Longitudinal comparison: the earlier image, sent first (preset cxr-longitudinal)"),
    ] = None,
    current: Annotated[
        Optional[str], typer.Option(help="Longitudinal comparison: the later image, sent second")
    ] = None,
    img: ImageArgs = IMAGE_DEFAULTS,
    preset: PresetOpt = None,
    sr: SrOpt = None,
    stow: StowOpt = None,
    sr_thought: Annotated[
        bool, typer.Option("--sr-thought", help="With --sr: put the model's thought in the report too (default: not)")
    ] = False,
    audio: Annotated[
        Optional[str],
        typer.Option(
            "--audio",
            help="A dictation (WAV/FLAC/MP3/OGG): transcribed with MedASR first, then given to the model with the question (default: a structured report)",
        ),
    ] = None,
    asr_model: Annotated[
        Optional[str], typer.Option("--asr-model", help="With --audio: medasr (default) or a lasr_ctc checkpoint")
    ] = None,
    json_schema: Annotated[
        Optional[str],
        typer.Option("--schema", help="JSON schema file: the answer is decoded under it (constrained decoding)"),
    ] = None,
) -> None:
    """Ask one question, optionally about images; prints the answer (streamed on a terminal).

    Several DICOM files given with --image are sent oldest first (StudyDate/AcquisitionDateTime), with a note.

    Example: medgemma ask --model medgemma-4b-it --image cxr.dcm "Describe this chest X-ray."
    Example: medgemma ask -m medgemma-1.5-4b-it -i ct/ --show-prompt "Is there a liver lesion?"
    Example: medgemma ask -m medgemma-1.5-4b-it --prior 2024.dcm --current 2025.dcm "Has the effusion changed?"
    Example: medgemma ask -m medgemma-1.5-4b-it -i ct_series/ "Any liver lesion?" --sr answer_sr.dcm
    Example: medgemma ask -m medgemma-1.5-4b-it --audio dictation.wav -i cxr.dcm "Write the report."
    """
    from ..errors import BadInput
    from ..prompts.presets import LONGITUDINAL

    opts = img.options()
    schema = None
    if json_schema is not None:  # checked before any audio is transcribed or a model loads
        from ..extract import read_schema

        schema = read_schema(json_schema, "--schema")
    dictation = None
    if audio is not None:
        from .asr import transcribe_dictation

        if prior is not None or current is not None:
            raise BadInput("--audio does not combine with --prior/--current")
        check_sources(image)
        dictation = transcribe_dictation(audio, question, asr_model, mo.device, mo.allow_download)
        question = dictation["prompt"]
    if prior is not None or current is not None:
        if prior is None or current is None:
            raise BadInput("a comparison needs both --prior and --current")
        if image:
            raise BadInput("give the images of a comparison as --prior and --current, without --image")
        image, preset = [prior, current], preset or LONGITUDINAL
    elif question is None:
        raise BadInput('give a question, e.g. medgemma ask "What is sepsis?"')
    elif image and len(image) > 1:
        from ..imaging.order import order_by_acquisition

        ordered = order_by_acquisition(image)
        image = ordered.sources
        if ordered.notice:
            print(ordered.notice, file=sys.stderr)
    question = question or ""
    check_sources(image)  # before the model loads (and before the demo notice)
    if sr is not None:
        from ..sr import check_dicom_sources
        from .sr import check_sr_options

        check_sr_options(sr, stow)
        check_dicom_sources(image or [])
    elif stow is not None or sr_thought:
        raise BadInput("--stow and --sr-thought go with --sr OUT.dcm")
    if show_prompt and not (mo.upstream or mo.backend not in ("auto", "transformers")):
        from .show_prompt import show_prompt_offline

        shown = show_prompt_offline(
            mo.model,
            question,
            image or [],
            opts,
            system=system,
            think=think,
            instruction=instruction,
            preset=preset,
            allow_download=mo.allow_download,
        )
        if shown is not None:
            print(shown)
            return
    mg = mo.load(preset)
    _warn_if_no_thinking(mg, think)
    req = mg.request(
        question,
        image or [],
        system=system,
        think=think,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        image_options=opts,
        instruction=instruction,
        json_schema=schema,
    )
    if show_prompt:
        from ..prompts.render import render_for_backend

        print(render_for_backend(mg, req.prompt))
        return
    # The SR's evidence before generating: a file changed since it was read fails before the model's time is spent.
    evidence = _sr_evidence(req, image or []) if sr is not None else []
    if as_json:
        from ..api import Answer

        ans = None
        for item in mg.stream(req):
            if isinstance(item, Answer):
                ans = item
        assert ans is not None
        out = ans.to_dict()
        out["demo_model"] = mg.is_demo
        if sr is not None:
            out.update(_write_answer_sr(mg, question, ans, evidence, sr, stow, sr_thought))
        if dictation is not None:
            out["dictation"] = dictation
        print(json.dumps(out, ensure_ascii=False))
        return
    final = _print_streamed(mg, req, show_thought=think, live=sys.stdout.isatty())
    if sr is not None:
        _write_answer_sr(mg, question, final, evidence, sr, stow, sr_thought)


def _sr_evidence(req: GenerationRequest, sources: list[str]) -> list[Any]:
    """The headers of exactly the instances in the prompt (a series' sampled slices), read again from disk or
    from the DICOMweb server they came from."""
    from ..imaging.manifest import prompt_manifest
    from ..sr import evidence_for

    return evidence_for(prompt_manifest(req.prompt), sources)


def _write_answer_sr(
    mg: MedGemma, question: str, ans: Answer, evidence: list[Any], path: Path, stow_url: str | None, thought: bool
) -> dict[str, Any]:
    from ..sr import algorithm_of, sr_from_answer
    from .sr import write_and_store

    report = sr_from_answer(question, ans, evidence, algorithm_of(mg, ans.preset), include_thought=thought)
    n = len(evidence)
    return write_and_store(report, path, stow_url, f"Comprehensive SR, {n} source instance{'s' if n != 1 else ''}")


def _warn_if_no_thinking(mg: MedGemma, think: bool) -> None:
    """--think on a model that was not trained to think would be silently ignored by the model: say so."""
    if think and not mg.backend.info.thinking:
        print(
            f"note: --think: {mg.backend.info.name} is not a thinking model (MedGemma 1.5 4B, 27B and 27B text "
            "are); its answer will have no separate thought",
            file=sys.stderr,
        )


def _print_streamed(mg: MedGemma, req: GenerationRequest, show_thought: bool, live: bool) -> Answer:
    """Stream the answer to stdout; the thought (only when asked for) goes to stderr, dimmed on a terminal."""
    from ..api import Answer

    thought_open = False
    final = None
    for item in mg.stream(req):
        if isinstance(item, Answer):
            final = item
            break
        channel, text = item
        if channel == "thought":
            if show_thought and live:
                if not thought_open:
                    sys.stderr.write("\x1b[2m[thought] ")
                    thought_open = True
                sys.stderr.write(text)
                sys.stderr.flush()
        elif live:
            if thought_open:
                sys.stderr.write("\x1b[0m\n")
                thought_open = False
            sys.stdout.write(text)
            sys.stdout.flush()
    if thought_open:
        sys.stderr.write("\x1b[0m\n")
    assert final is not None
    if live:
        # Streamed text is not stripped; close the line.
        sys.stdout.write("\n")
    else:
        if show_thought and final.thought:
            print(f"[thought] {final.thought}", file=sys.stderr)
        print(final.text)
    if final.finish_reason == "length" and not final.text:
        print("note: the answer was cut off by --max-new-tokens before it began", file=sys.stderr)
    return final


@app.command()
@option_groups(mo=ModelOptions)
def chat(
    mo: ModelOptions = MODEL_DEFAULTS,
    system: Annotated[Optional[str], typer.Option(help="System prompt")] = None,
    think: Annotated[bool, typer.Option("--think", help="Start with thinking on (/think toggles)")] = False,
    max_new_tokens: Annotated[Optional[int], typer.Option()] = None,
    preset: PresetOpt = None,
) -> None:
    """Interactive multi-turn chat. Commands: /image PATH, /think, /reset, /help, /quit.

    Example: medgemma chat --model medgemma-4b-it
    """
    from ..chat.repl import run_repl

    mg = mo.load(preset)
    _warn_if_no_thinking(mg, think)
    run_repl(mg, system=system, think=think, max_new_tokens=max_new_tokens)


@app.command()
@option_groups(img=ImageArgs)
def preview(
    image: Annotated[list[str], typer.Argument(help="Image file(s) or other image sources")],
    output: Annotated[Path, typer.Option("--out", "-o", "--output", help="PNG to write")],
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Use this model's input size (no weights are loaded)")
    ] = None,
    size: Annotated[Optional[int], typer.Option(help="Model input size in pixels (default 896, MedGemma's)")] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print what the model sees as JSON: its images in order, each with source, instance_number, sop_instance_uid (hashed, as the server and eval records write it), label, patch",
        ),
    ] = False,
    img: ImageArgs = IMAGE_DEFAULTS,
) -> None:
    """Write exactly the image(s) the model will receive (padded, resized, windowed) to a PNG.

    A CT/MR series (directory, glob or DICOMweb URI) gives a grid of the sampled slices labelled "SLICE n"; a
    whole-slide image gives its sampled patches labelled with their level-0 coordinates.

    Example: medgemma preview cxr.dcm -o what_medgemma_sees.png
    Example: medgemma preview ct_series/ -o slices.png --max-slices 16
    Example: medgemma preview ct_series/ -o slices.png --json
    """
    from ..imaging import DEFAULT_IMAGE_SIZE, load_parts
    from ..imaging.manifest import for_records, image_manifest
    from ..imaging.montage import save_preview

    px = size or _model_image_size(model) or DEFAULT_IMAGE_SIZE
    opts = img.options()
    parts = [p for src in image for p in load_parts(src, opts, px)]
    n = save_preview(parts, output)
    if as_json:
        # UIDs hashed as the server and eval records hash them: a UID can identify a patient's study.
        images = for_records(image_manifest(parts))
        print(json.dumps({"output": str(output), "size": px, "images": images}, ensure_ascii=False))
    else:
        print(f"wrote {output} ({n} image{'s' if n != 1 else ''} at {px}x{px})")


def _model_image_size(model: str | None) -> int | None:
    """Read the input size from a checkpoint's processor config, without loading weights."""
    if not model:
        return None
    from ..models.resolve import resolve_model

    r = resolve_model(model)
    if r.variant is not None and r.variant.image_size:
        return r.variant.image_size
    if not r.path.is_dir():
        return None
    from ..models.checkpoint import processor_image_size

    return processor_image_size(r.path)


models_app = typer.Typer(invoke_without_command=True)  # help: the callback's docstring
app.add_typer(models_app, name="models")


@models_app.callback()
def models(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """List MedGemma variants (modality, thinking, memory) and where each is found locally — offline.

    Example: medgemma models
    Example: medgemma models --json
    Example: medgemma models register medgemma-4b-it /data/models/medgemma-4b-it
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..models.catalog import list_models, print_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_models(rows)


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Name to use with --model (e.g. medgemma-4b-it)")],
    directory: Annotated[str, typer.Argument(help="Checkpoint directory or .gguf file")],
) -> None:
    """Remember where a checkpoint lives, so `--model NAME` finds it.

    Example: medgemma models register medgemma-4b-it /data/models/medgemma-4b-it
    """
    from ..models.local import register

    path = register(name, directory)
    print(f"registered {name} -> {path}")
