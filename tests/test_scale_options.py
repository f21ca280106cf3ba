"""Every option of `embed`, `batch`, `eval` and `localize --batch` reaches the workers of `--workers`/`--ray`, or is
the driver's on purpose: one table, checked two ways.

- **Complete**: the table must name every parameter of each command (read off the typer app), so a new option
  fails here until someone says where it goes. (`--schema` was once accepted and silently not sent to workers.)
- **Delivered**: each command runs once with every worker-bound option at a value other than its default; the
  worker object the command hands to its `Scatter` is pickled and unpickled (as a worker process receives it),
  run in this process, and must hold each value where the table says (`w.load.args[0]` is the options object the
  worker loads its model with, `w.options` the image options, ...).

Models: the scripted OpenAI-compatible upstream on loopback (`batch`, `eval`, `localize`), the tiny random
checkpoints (`eval --mode loglikelihood`, `embed`).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
from conftest import run_cli_inproc
from PIL import Image

from medgemma_toolkit.cli import app
from medgemma_toolkit.core.scatter import in_process
from medgemma_toolkit.testing.synthetic_cxr import make_cxr
from medgemma_toolkit.testing.upstream import ScriptedUpstream


@dataclass(frozen=True)
class To:
    """The option reaches the worker: `get(worker)` must equal `value` after the run."""

    get: Callable[[Any], Any]
    value: Any


@dataclass(frozen=True)
class Driver:
    """The option is used in the driver only (reading inputs, writing outputs, choosing where work runs)."""

    why: str


def _model(name: str, value: Any) -> To:
    """A `ModelOptions`/`EmbedModelOptions` field: the worker loads with the whole options object."""
    return To(lambda w: getattr(w.load.args[0], name), value)


def _image(name: str, value: Any) -> To:
    """An `ImageArgs` field: the worker reads images with these `ImageOptions`."""
    return To(lambda w: getattr(w.options, name), value)


# Values other than the defaults, that the scripted upstream accepts (llama.cpp/CUDA-only ones are carried, unused).
MODEL_ARGS: dict[str, tuple[list[str], Any]] = {
    "model": (["-m", "scripted"], "scripted"),
    "backend": (["--backend", "openai"], "openai"),
    "device": (["--device", "cpu"], "cpu"),
    "dtype": (["--dtype", "float32"], "float32"),
    "quantize": (["--quantize", "8bit"], "8bit"),
    "allow_download": (["--allow-download"], True),
    "upstream": ([], "UPSTREAM"),  # the test server's URL, filled in at run time
    "mmproj": (["--mmproj", "proj.gguf"], "proj.gguf"),
    "threads": (["--threads", "3"], 3),
    "memory_check": (["--no-memory-check"], False),
    "parallel": (["--parallel", "2"], 2),
    "vision_runtime": (["--vision-runtime", "torch"], "torch"),
}
IMAGE_ARGS: dict[str, tuple[list[str], Any]] = {
    "window": (["--window", "full"], "full"),
    "frame": (["--frame", "0"], 0),
    "max_slices": (["--max-slices", "7"], 7),
    "slice_order": (["--slice-order", "position"], "position"),
    "slice_sampling": (["--slice-sampling", "linspace"], "linspace"),
    "ct_windows": (["--ct-windows", "server"], "server"),
    "max_patches": (["--max-patches", "5"], 5),
    "patch_seed": (["--patch-seed", "3"], 3),
    "patch_order": (["--patch-order", "spatial"], "spatial"),
    "pad": (["--no-pad"], False),
}
SCALE = {"workers": Driver("the plan: how many workers"), "ray": Driver("the plan: where the workers run")}
UNITS = "read by the driver into the units the workers get"


def _with_model() -> dict[str, Any]:
    return {name: _model(name, value) for name, (_, value) in MODEL_ARGS.items()}


def _with_images() -> dict[str, Any]:
    return {name: _image(name, value) for name, (_, value) in IMAGE_ARGS.items()}


TABLE: dict[str, dict[str, To | Driver]] = {
    "batch": {
        **_with_model(),
        **SCALE,
        "input": Driver(UNITS),
        "out": Driver("the driver appends every answered row"),
        "resume": Driver("the driver skips rows already in --out"),
        "on_error": Driver("rows are read and outcomes written by the driver"),
        "stow": Driver("the driver stores the SRs it wrote"),
        "batch_size": To(lambda w: w.batch_size, 3),
        "max_new_tokens": To(lambda w: w.max_new_tokens, 7),
        "think": To(lambda w: w.think, True),
        "schema": To(lambda w: w.schema, {"type": "object"}),
        "sr": To(lambda w: w.sr, True),  # the workers send back what the SRs cite
    },
    "eval": {
        **_with_model(),
        **SCALE,
        **{k: Driver(UNITS) for k in ("task", "data", "split", "ids", "limit", "conditions", "images")},
        "out": Driver("the driver writes records, summary and reports"),
        "resume": Driver("the driver skips recorded questions"),
        "on_error": Driver("the driver reads rows and writes outcomes"),
        "no_cache": Driver("the driver consults the result cache"),
        "bootstrap": Driver("the driver scores"),
        "metric_convention": Driver("the driver scores"),
        "batch_size": To(lambda w: w.batch_size, 3),
        "max_new_tokens": To(lambda w: w.requests.max_new_tokens, 7),
        "temperature": To(lambda w: w.requests.temperature, 0.5),
        "think": To(lambda w: w.requests.think, True),
        "mode": To(lambda w: w.requests.mode, "loglikelihood"),  # checked in its own run (a local model scores)
    },
    "localize": {
        **_with_model(),
        **_with_images(),
        **SCALE,
        "objects": Driver(UNITS),
        "batch": Driver(UNITS),
        "image": Driver("one --image runs in this process; refused with --workers"),
        "as_json": Driver("--batch prints JSON lines either way"),
        "sr": Driver("one image only; refused with --batch"),
        "sc": Driver("one image only; refused with --batch"),
        "stow": Driver("one image only; refused with --batch"),
        "output": To(lambda w: w.overlays, "OVERLAYS"),  # a folder of the test's, filled in at run time
        "max_new_tokens": To(lambda w: w.max_new_tokens, 7),
    },
    "embed": {
        **_with_images(),
        **SCALE,
        "model": To(lambda w: w.load.args[0].model, "SIGLIP"),  # the tiny checkpoint's folder
        "device": To(lambda w: w.load.args[0].device, "cpu"),
        "dtype": To(lambda w: w.load.args[0].dtype, "float32"),
        "allow_download": To(lambda w: w.load.args[0].allow_download, True),
        "batch_size": To(lambda w: w.load.args[0].batch_size, 2),
        "decode_threads": To(lambda w: w.load.args[0].decode_threads, 2),
        "resize": To(lambda w: w.load.args[0].resize, "processor"),
        "image": Driver(UNITS),
        "text": Driver(UNITS),
        "out": Driver("the driver writes the vectors"),
        "as_json": Driver("the driver prints"),
    },
}


def test_the_table_names_every_option_of_every_scaled_command():
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name, routes in TABLE.items():
        params = {p.name for p in commands[name].params}
        assert params - routes.keys() == set(), f"`{name}`: say where these options go (the workers or the driver)"
        assert routes.keys() - params == set(), f"`{name}`: the table names options the command no longer has"


@pytest.fixture
def captured(monkeypatch) -> list[Any]:
    """The worker factories the commands hand to their `Scatter`, each as a worker process would unpickle it; the
    units run here, in order (`core.scatter.in_process`), so the command completes."""
    import medgemma_toolkit.cli.scaling as scaling

    got: list[Any] = []

    def scatter_for(plan: Any, device: str, quiet: bool, what: str) -> Any:
        assert plan.parallel

        def scatter(units: Any, make_worker: Any, on_done: Any) -> None:
            make_worker = pickle.loads(pickle.dumps(make_worker))
            got.append(make_worker)
            in_process(pickle.loads(pickle.dumps(list(units))), make_worker, on_done)

        return scatter

    monkeypatch.setattr(scaling, "scatter_for", scatter_for)
    return got


def _args(table: dict[str, tuple[list[str], Any]], skip: tuple[str, ...] = ()) -> list[str]:
    return [a for k, (args, _) in table.items() if k not in skip for a in args]


def _check(command: str, worker: Any, fill: dict[str, Any], only: tuple[str, ...] | None = None) -> None:
    for name, route in TABLE[command].items():
        if isinstance(route, Driver) or (only is not None and name not in only):
            continue
        want = fill.get(route.value, route.value) if isinstance(route.value, str) else route.value
        assert route.get(worker) == want, f"`{command} --{name.replace('_', '-')}` did not reach the workers"


def _cxr(path: Path) -> Path:
    ds = make_cxr(rows=48, cols=40)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.910", "1.2.826.0.1.3680043.8.498.911"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_batch_options_reach_the_workers(captured, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _cxr(tmp_path / "cxr.dcm")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "a", "question": "Q?", "image": "cxr.dcm"}) + "\n")
    (tmp_path / "s.json").write_text(json.dumps({"type": "object"}))
    with ScriptedUpstream('{"x": 1}') as up:
        res = run_cli_inproc(
            "batch", "--upstream", up.url, *_args(MODEL_ARGS), "--input", "rows.jsonl", "-o", "out.jsonl",
            "--batch-size", "3", "--max-new-tokens", "7", "--schema", "s.json", "--sr", "srs", "--workers", "2",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "wrote 1 SRs" in res.stdout
        # --think cannot go with a schema upstream: its own run.
        think = run_cli_inproc(
            "batch", "--upstream", up.url, "--input", "rows.jsonl", "-o", "think.jsonl", "--think", "--workers", "2"
        )
        assert think.returncode == 0, think.stderr
    worker, thinking = captured
    _check("batch", worker, {"UPSTREAM": up.url}, only=tuple(k for k in TABLE["batch"] if k != "think"))
    _check("batch", thinking, {}, only=("think",))


def test_eval_options_reach_the_workers(captured, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))
    with ScriptedUpstream("Final Answer: A") as up:
        res = run_cli_inproc(
            "eval", "--upstream", up.url, *_args(MODEL_ARGS), "--task", "medqa", "--limit", "2", "-o",
            str(tmp_path / "run"), "--batch-size", "3", "--max-new-tokens", "7", "--temperature", "0.5", "--think",
            "--bootstrap", "10", "--workers", "2",
        )  # fmt: skip
    assert res.returncode == 0, res.stderr
    facts, worker = captured  # one worker describes the model, then the run's workers
    assert facts.load.args[0] == worker.load.args[0]
    _check("eval", worker, {"UPSTREAM": up.url}, only=tuple(k for k in TABLE["eval"] if k != "mode"))

    captured.clear()  # log-likelihood scoring needs a local model
    res = run_cli_inproc(
        "eval", "-m", str(tiny_model_dir), "--task", "medqa", "--limit", "2", "-o", str(tmp_path / "ll"),
        "--mode", "loglikelihood", "--bootstrap", "10", "--workers", "2",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    _check("eval", captured[-1], {}, only=("mode",))


def test_localize_batch_options_reach_the_workers(captured, tmp_path):
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "i.png")
    (tmp_path / "rows.csv").write_text("image,objects\ni.png,heart\n")
    box = 'Final Answer: ```json[{"box_2d": [100, 100, 750, 600], "label": "heart"}]```'
    with ScriptedUpstream(box) as up:
        res = run_cli_inproc(
            "localize", "--upstream", up.url, *_args(MODEL_ARGS), *_args(IMAGE_ARGS), "--batch",
            str(tmp_path / "rows.csv"), "-o", str(tmp_path / "ov"), "--max-new-tokens", "7", "--workers", "2",
        )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (worker,) = captured
    _check("localize", worker, {"UPSTREAM": up.url, "OVERLAYS": tmp_path / "ov"})


def test_embed_options_reach_the_workers(captured, tmp_path):
    from medgemma_toolkit.testing.tiny_siglip import build_tiny_siglip

    siglip = build_tiny_siglip(tmp_path / "siglip")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "i.png")
    res = run_cli_inproc(
        "embed", "-m", str(siglip), "--device", "cpu", "--dtype", "float32", "--allow-download", "--batch-size", "2",
        "--decode-threads", "2", "--resize", "processor", *_args(IMAGE_ARGS), "-i", str(tmp_path / "i.png"),
        "--workers", "2", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (worker,) = captured
    _check("embed", worker, {"SIGLIP": str(siglip)})
