"""`medgemma serve`: the OpenAI-compatible HTTP server and web page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .common import MODEL_DEFAULTS, ModelOptions, PresetOpt, option_groups


def _read_key(api_key: str | None, api_key_file: Path | None) -> str | None:
    from ..errors import BadInput

    if api_key and api_key_file:
        raise BadInput("give --api-key or --api-key-file, not both")
    if api_key_file is not None:
        try:
            key = api_key_file.read_text().strip()
        except OSError as e:
            raise BadInput(f"--api-key-file {api_key_file}: cannot read ({e.strerror})") from None
        if not key:
            raise BadInput(f"--api-key-file {api_key_file}: file is empty")
        return key
    return api_key or None


@app.command()
@option_groups(mo=ModelOptions)
def serve(
    mo: ModelOptions = MODEL_DEFAULTS,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback requires an API key")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option(envvar="MEDGEMMA_API_KEY", help="Require 'Authorization: Bearer KEY' (or set MEDGEMMA_API_KEY)"),
    ] = None,
    api_key_file: Annotated[Optional[Path], typer.Option(help="Read the API key from this file")] = None,
    served_model_name: Annotated[
        Optional[str], typer.Option(help="Model id clients send (default: the model's name)")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Requests decoded together in one batch")] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait for a batch; more get 429")] = 64,
    batch_window_ms: Annotated[
        float, typer.Option(help="How long a forming batch waits for more requests under concurrent load")
    ] = 25.0,
    request_timeout: Annotated[float, typer.Option(help="Seconds a request may take, queueing included")] = 300.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a client may take to send its request body")] = 60.0,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a connection may take to send complete request headers")
    ] = 10.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body (MiB)")] = 32.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image (pixels) before resizing")] = 64_000_000,
    max_images: Annotated[int, typer.Option(help="Most images per request")] = 16,
    max_request_pixels: Annotated[
        int, typer.Option(help="Most image pixels per request, all images together (checked before each decode)")
    ] = 256_000_000,
    decode_budget: Annotated[float, typer.Option(help="CPU seconds a request may spend decoding its images")] = 30.0,
    allow_image_host: Annotated[
        Optional[list[str]], typer.Option(help="Allow http(s) image URLs from this host (repeat); default none")
    ] = None,
    image_root: Annotated[
        Optional[Path], typer.Option(help="Allow local image paths under this directory; default never")
    ] = None,
    allow_host: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Without an API key, also answer requests whose Host header names this (a reverse proxy's name; repeat; '*' = any). Default: loopback names only"
        ),
    ] = None,
    log_prompts: Annotated[
        bool, typer.Option("--log-prompts", help="Log prompt text (off by default: it may be PHI)")
    ] = False,
    embed_model: Annotated[
        Optional[str],
        typer.Option(
            help="Also serve a MedSigLIP (SigLIP) checkpoint: POST /v1/embeddings and /v1/medgemma/zero-shot (name, hub id or directory)"
        ),
    ] = None,
    asr_model: Annotated[
        Optional[str],
        typer.Option(help="Also serve a MedASR (lasr_ctc) checkpoint: POST /v1/audio/transcriptions (e.g. medasr)"),
    ] = None,
    preset: PresetOpt = None,
) -> None:
    """Serve the OpenAI Chat Completions API (text, images, DICOM) and a web page at /.

    Example: medgemma serve --model medgemma-4b-it --port 8000 --api-key-file key.txt
    Example: medgemma serve --model medgemma-4b-it --embed-model medsiglip-448
    Example: medgemma serve --model medgemma-4b-it --asr-model medasr
    """
    from ..serve.config import ServeConfig
    from ..serve.server import check_port_free
    from ..serve.server import serve as run

    config = ServeConfig(
        host=host,
        port=port,
        api_key=_read_key(api_key, api_key_file),
        served_model_name=served_model_name,
        max_body_bytes=int(max_body_mb * 1024**2),
        max_pixels=max_pixels,
        max_images=max_images,
        max_request_pixels=max_request_pixels,
        decode_budget_s=decode_budget,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        batch_window_ms=batch_window_ms,
        request_timeout_s=request_timeout,
        body_timeout_s=body_timeout,
        header_timeout_s=header_timeout,
        allow_image_hosts=tuple(allow_image_host or ()),
        image_root=image_root,
        log_prompts=log_prompts,
        allow_hosts=tuple(allow_host or ()),
    )
    config.check()  # before the model loads: refusing to start should be instant
    check_port_free(host, port)
    embedder = None
    if embed_model is not None:
        from ..embed import MedSigLIP

        embedder = MedSigLIP.load(embed_model, device=mo.device, allow_download=mo.allow_download)
    transcriber = None
    if asr_model is not None:
        from ..asr.transcribe import Transcriber

        transcriber = Transcriber.load(asr_model, device=mo.device, allow_download=mo.allow_download)
    mg = mo.load(preset, max_batch_size=max_batch_size)  # the engine takes the whole batch the batcher forms
    run(mg, config, embedder, transcriber)
