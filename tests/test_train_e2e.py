"""Fine-tuning end to end on the tiny MedGemma checkpoint: learning, kill -9 + resume, interrupted saves,
adapter loading in plain transformers, merge export, GRPO, device errors. All real components, no mocks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image

from medgemma_toolkit.train import checkpoints as ck
from medgemma_toolkit.train.logs import read_log

pytestmark = pytest.mark.slow
CLASSES = {"edema": (40, 40, 210), "normal": (210, 40, 40)}
QUESTION = "What does this image show? Answer with exactly one of: edema, normal."


def _make_class_folder(root: Path, per_class: int, seed: int) -> Path:
    rng = random.Random(seed)
    for name, color in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = Image.new("RGB", (40 + rng.randrange(24), 32 + rng.randrange(24)), color)
            for _ in range(40):  # speckle so no two images are identical
                im.putpixel((rng.randrange(im.width), rng.randrange(im.height)), (255, 255, 255))
            im.save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trainable_model(tmp_path_factory) -> Path:
    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma
    from medgemma_toolkit.testing.trainable import make_trainable

    return make_trainable(build_tiny_medgemma(tmp_path_factory.mktemp("ft") / "tiny-medgemma"))


@pytest.fixture(scope="module")
def class_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return _make_class_folder(root / "train", 8, seed=1), _make_class_folder(root / "heldout", 3, seed=2)


@pytest.fixture(scope="module")
def trained(trainable_model, class_data, tmp_path_factory):
    """One real fine-tuning run: 16 images in two classes, held-out images scored before and after."""
    from medgemma_toolkit.train.sft import FinetuneSettings, run_finetune

    train_dir, heldout = class_data
    out = tmp_path_factory.mktemp("runs") / "run"
    result = run_finetune(
        FinetuneSettings(
            model=str(trainable_model),
            data=str(train_dir),
            out=str(out),
            recipe="cpu-small",
            overrides={"max_steps": 40, "learning_rate": 5e-3, "save_steps": 20},
            val_data=str(heldout),
            eval_task="val",
            device="cpu",
            quiet=True,
        )
    )
    return result


def test_sixteen_images_are_learned(trained, trainable_model, class_data):
    from medgemma_toolkit.prompts.presets import get_preset
    from medgemma_toolkit.train.data import load_dataset
    from medgemma_toolkit.train.evaluate import evaluate

    r = trained
    assert r.steps == 40
    rows = read_log(r.run_dir / "loss_log.jsonl")
    assert [x["step"] for x in rows] == list(range(1, 41))
    first, last = rows[0]["loss"], sum(x["loss"] for x in rows[-3:]) / 3
    assert last <= first / 2, (first, last)
    # Measured on the 16 training images: the adapter answers the labels better than the base model.
    train = load_dataset(class_data[0], "classification", val_fraction=0).train
    assert len(train) == 16
    preset = get_preset("finetune-notebook")  # the layout the notebook recipe trains with
    before = evaluate(trainable_model, None, preset, train, "accuracy", "cpu")
    after = evaluate(trainable_model, r.adapter_dir, preset, train, "accuracy", "cpu")
    assert after["value"] > before["value"], (before, after)
    assert after["value"] >= 0.75
    # The run report holds before/after on the held-out images, with intervals.
    report = json.loads((r.run_dir / "report.json").read_text())
    assert report["before"]["n"] == 6 and report["after"]["n"] == 6
    assert report["after"]["value"] > report["before"]["value"]
    assert len(report["after"]["ci95"]) == 2
    prov = json.loads((r.run_dir / "provenance.json").read_text())
    assert prov["recipe"]["lora_r"] == 16 and prov["recipe"]["learning_rate"] == 5e-3
    assert len(prov["data"]["train_sha256"]) == 64 and prov["packages"]["peft"]
    assert prov["result"]["steps"] == 40
    assert Image.open(r.run_dir / "loss_curve.png").size == (640, 400)


def test_adapter_is_the_notebooks_and_loads_in_plain_transformers(trained, trainable_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = json.loads((trained.adapter_dir / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 16 and cfg["lora_dropout"] == 0.05
    base = AutoModelForImageTextToText.from_pretrained(str(trainable_model))
    model = PeftModel.from_pretrained(base, str(trained.adapter_dir))
    lora_modules = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    # cpu-small is the notebook recipe: all linear layers (vision tower too), lm_head and embed_tokens in full
    assert any("language_model" in n for n in lora_modules) and any("vision_tower" in n for n in lora_modules)
    assert sorted(cfg["modules_to_save"]) == ["embed_tokens", "lm_head"]
    proc = AutoProcessor.from_pretrained(str(trained.adapter_dir))
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}
    ]  # the notebook's layout
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = proc(
        text=[text],
        images=[[Image.new("RGB", (50, 40), CLASSES["edema"])]],
        return_tensors="pt",
        add_special_tokens=False,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert proc.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip() == "edema"


def test_export_merge_loads_in_medgemma_and_plain_transformers(trained, trainable_model, class_data, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "merged"
    p = run_cli("export", "--adapter", str(trained.adapter_dir), "--merge", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert (out / "config.json").is_file() and (out / "merge_info.json").is_file()
    assert not any(f.name.startswith("adapter_") for f in out.iterdir())
    merged = AutoModelForImageTextToText.from_pretrained(str(out))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForImageTextToText.from_pretrained(str(trainable_model))
    changed = [n for (n, a), (_, b) in zip(merged.named_parameters(), base.named_parameters()) if not torch.equal(a, b)]
    # the notebook recipe: LoRA on every linear layer (vision tower too) and embed_tokens trained in full
    assert any("language_model.layers" in n for n in changed) and any("vision_tower" in n for n in changed)
    assert any(n.endswith("embed_tokens.weight") for n in changed)
    img = next((class_data[1] / "normal").iterdir())
    p = run_cli("ask", "--model", str(out), "--image", str(img), "--preset", "finetune-notebook", "--json", QUESTION)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["text"] == "normal"
    p = run_cli("export", "--adapter", str(trained.adapter_dir), "--merge", "-o", str(out))
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "not empty" in p.stderr


def _wait_for_step(log: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it could be killed: {proc.stderr.read()}")
        rows = read_log(log)
        if rows and rows[-1]["step"] >= step:
            return
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


def test_kill_9_then_resume_ends_at_the_same_step_with_a_continuous_curve(trainable_model, class_data, tmp_path):
    out = tmp_path / "run"
    args = [
        "finetune",
        "--model",
        str(trainable_model),
        "--data",
        str(class_data[0]),
        "--out",
        str(out),
        "--recipe",
        "cpu-small",
        "--max-steps",
        "12",
        "--save-steps",
        "4",
        "--lr",
        "5e-3",
        "--val-fraction",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medgemma_toolkit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_step(out / "loss_log.jsonl", proc, 6)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before_kill = read_log(out / "loss_log.jsonl")
    done = ck.complete_checkpoints(out / "checkpoints")
    assert done, "no checkpoint was completed before the kill"
    last_step = done[-1][0]
    assert last_step in (4, 8)
    assert not (out / "adapter").exists()
    # The next save, interrupted: staged files, and (had the rename raced) an unmarked, half-written folder.
    nxt = last_step + 4
    (out / "checkpoints" / f"{ck.STAGING_PREFIX}{nxt}" / f"checkpoint-{nxt}").mkdir(parents=True)
    half = out / "checkpoints" / f"checkpoint-{nxt}"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    (half / "trainer_state.json").write_text('{"global_step": ')

    p = run_cli("finetune", "--out", str(out), "--resume", "--quiet")
    assert p.returncode == 0, p.stderr
    assert f"trained 12 steps (resumed from step {last_step})" in p.stdout
    rows = read_log(out / "loss_log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))  # no gap, no step twice
    assert rows[:last_step] == before_kill[:last_step]  # the curve up to the checkpoint is kept as it was
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["resumed_from_step"] == last_step and prov["result"]["steps"] == 12
    # The half-written folder was discarded, never loaded; the resumed run wrote that step again, completely.
    assert not any(d.name.startswith(ck.STAGING_PREFIX) for d in (out / "checkpoints").iterdir())
    assert [s for s, _ in ck.complete_checkpoints(out / "checkpoints")] == [8, 12]
    assert (half / "adapter_model.safetensors").stat().st_size > 10
    assert json.loads((half / "trainer_state.json").read_text())["global_step"] == nxt
    state = json.loads((ck.latest_checkpoint(out / "checkpoints") / "trainer_state.json").read_text())
    assert state["global_step"] == 12

    # Same data order and optimizer state: an uninterrupted run of the same settings has the same losses.
    ref = tmp_path / "ref"
    p = run_cli(*[a if a != str(out) else str(ref) for a in args])
    assert p.returncode == 0, p.stderr
    ref_rows = read_log(ref / "loss_log.jsonl")
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], rel=1e-4, abs=1e-5)


def test_grpo_steps_run_with_the_final_answer_reward(tiny_text_model_dir, tmp_path):
    data = tmp_path / "mcq.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"question": "Which organ pumps blood?", "options": {"A": "heart", "B": "lung"}, "answer": "A"},
                {"question": "Fluid around the lung?", "options": ["edema", "effusion"], "answer": "B"},
            ]
        )
        + "\n"
    )
    out = tmp_path / "rl"
    # the notebook recipe (the default) with a batch small enough for two questions
    p = run_cli(
        "rl",
        "--model",
        str(tiny_text_model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--num-generations",
        "2",
        "--max-completion-length",
        "12",
        "--save-steps",
        "2",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    assert "trained 3 GRPO steps" in p.stdout
    rows = read_log(out / "loss_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all("reward" in r for r in rows)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert [s for s, _ in ck.complete_checkpoints(out / "checkpoints")] == [2, 3]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["reward"]["correct"] == 1.0 and prov["result"]["steps"] == 3
    assert prov["rl_recipe"]["name"] == "notebook" and prov["mcq_prompt"] == "google-rl@1"
    assert prov["rl_recipe"]["lora_r"] == 64 and prov["recipe"]["lora_alpha"] == 64
    # --resume reopens the run with its recorded settings and skips a checkpoint whose save never completed.
    (out / "checkpoints" / "checkpoint-4").mkdir()
    p = run_cli("rl", "--out", str(out), "--resume", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "trained 3 GRPO steps (resumed from step 3)" in p.stdout
    assert not (out / "checkpoints" / "checkpoint-4").exists()
    assert [r["step"] for r in read_log(out / "loss_log.jsonl")] == [1, 2, 3]


def test_device_and_input_errors_are_one_line(trainable_model, class_data, tmp_path):
    p = run_cli(
        "finetune",
        "--model",
        str(trainable_model),
        "--data",
        str(class_data[0]),
        "--out",
        str(tmp_path / "q"),
        "--method",
        "qlora",
        "--device",
        "cpu",
    )
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert "qlora needs a CUDA GPU" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    p = run_cli(
        "finetune",
        "--model",
        str(trainable_model),
        "--data",
        str(bad),
        "--out",
        str(tmp_path / "b"),
        "--task",
        "vqa",
        "--device",
        "cpu",
    )
    assert p.returncode == 2 and "line 2: missing 'answer'" in p.stderr and p.stderr.count("\n") == 1
    p = run_cli("finetune", "--out", str(tmp_path / "nothing"), "--resume")
    assert p.returncode == 2 and "no run to resume" in p.stderr


def test_eval_task_from_the_harness_scores_before_and_after(trainable_model, class_data, tmp_path):
    """--eval-task with a harness task: its runner scores the base and the adapted model (tiny sample, short
    answers, so only the plumbing is measured here, not accuracy)."""
    from medgemma_toolkit.train.sft import FinetuneSettings, run_finetune

    out = tmp_path / "run"
    r = run_finetune(
        FinetuneSettings(
            model=str(trainable_model),
            data=str(class_data[0]),
            out=str(out),
            recipe="cpu-small",
            overrides={"max_steps": 2},
            val_fraction=0,
            eval_task="image_mcq",
            eval_max_new_tokens=4,
            device="cpu",
            quiet=True,
        )
    )
    assert r.report is not None and r.report["eval_task"] == "image_mcq"
    for phase in ("before", "after"):
        score = r.report[phase]
        assert score["task"] == "image_mcq@1" and score["metric"] == "accuracy" and score["n"] > 0
        assert 0.0 <= score["value"] <= 1.0 and len(score["ci95"]) == 2
        summary = json.loads((out / f"eval-{phase}" / "summary.json").read_text())
        assert summary["generation"]["max_new_tokens"] == 4
    saved = json.loads((out / "report.json").read_text())
    assert saved["delta"] == pytest.approx(saved["after"]["value"] - saved["before"]["value"], abs=1e-4)


def test_dicom_and_ct_series_rows_train_without_leaking_header_values(trainable_model, tmp_path):
    """CSV rows pointing at a DICOM slice and a CT series folder go through the imaging layer (the series becomes
    slices with "SLICE n" text parts); nothing the run writes carries a DICOM header value."""
    from medgemma_toolkit.testing.synthetic_dicom import FAKE_PHI, SeriesSpec, write_series
    from medgemma_toolkit.train.sft import FinetuneSettings, run_finetune

    files = write_series(tmp_path / "ct", SeriesSpec(slices=4))
    (tmp_path / "rows.csv").write_text(
        "image,question,answer\n"
        f"{files[0].relative_to(tmp_path)},What organ is shown?,liver\n"
        "ct,Any acute findings?,no acute findings\n"
    )
    from transformers import AutoProcessor

    from medgemma_toolkit.prompts.presets import get_preset
    from medgemma_toolkit.train.collator import SFTCollator
    from medgemma_toolkit.train.data import load_dataset

    rows = load_dataset(tmp_path / "rows.csv", "vqa", val_fraction=0).train
    proc = AutoProcessor.from_pretrained(str(trainable_model))
    enc = SFTCollator(rows, proc, proc.tokenizer, get_preset("medgemma-1.5"), 64).encode(rows[1])
    assert enc.pixel_values.shape[0] == 4 and "SLICE 4" in proc.tokenizer.decode(enc.input_ids)
    out = tmp_path / "run"
    r = run_finetune(
        FinetuneSettings(
            model=str(trainable_model),
            data=str(tmp_path / "rows.csv"),
            out=str(out),
            task="vqa",
            recipe="cpu-small",
            overrides={"max_steps": 2, "batch_size": 2},
            val_fraction=0,
            device="cpu",
            quiet=True,
        )
    )
    assert r.steps == 2 and r.first_loss is not None
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".txt")]
    assert written
    for p in written:
        text = p.read_text(errors="ignore")
        for value in FAKE_PHI.values():
            assert str(value) not in text, (p.name, value)
