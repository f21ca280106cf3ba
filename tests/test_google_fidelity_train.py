"""Fine-tuning and GRPO recipes against outputs of Google's notebooks (tests/data/google_reference/*.json, each
naming its source repository, file and commit); see tests/test_google_fidelity.py for how the references were made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REF = Path(__file__).parent / "data" / "google_reference"


def ref(name: str) -> dict:
    return json.loads((REF / name).read_text())


# -- fine-tuning: the notebook recipe ----------------------------------------------------------------------------

FT = ref("finetune_notebook.json")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

    return build_tiny_medgemma(tmp_path_factory.mktemp("ftref") / "tiny")


def test_notebook_recipe_wraps_the_notebooks_modules(tiny_dir):
    from transformers import AutoModelForImageTextToText

    from medgemma_toolkit.train.model import add_lora
    from medgemma_toolkit.train.recipe import get_recipe

    model = add_lora(AutoModelForImageTextToText.from_pretrained(str(tiny_dir)), get_recipe("notebook"), "lora", False)
    lora = sorted(n[: -len(".lora_A")] for n, _ in model.named_modules() if n.endswith(".lora_A"))
    saved = sorted(n[: -len(".modules_to_save")] for n, _ in model.named_modules() if n.endswith(".modules_to_save"))
    assert lora == FT["lora_modules"] and saved == FT["modules_to_save"]
    assert any("vision_tower" in n for n in lora)  # all-linear: the vision tower is adapted too


def test_notebook_collator_labels_the_whole_conversation(tiny_dir):
    from PIL import Image
    from transformers import AutoProcessor

    from medgemma_toolkit.prompts.presets import get_preset
    from medgemma_toolkit.train.collator import SFTCollator
    from medgemma_toolkit.train.data import Example

    proc = AutoProcessor.from_pretrained(str(tiny_dir))
    ex = Example(
        FT["example"]["question"], FT["example"]["answer"], images=(Image.new("RGB", (64, 64), (200, 40, 40)),)
    )
    col = SFTCollator([ex], proc, proc.tokenizer, get_preset("finetune-notebook"), 64, loss_on="conversation")
    assert col.render_conversation(col.prompt_for(ex), ex.answer) == FT["rendered"]
    enc = col.encode(ex)
    assert enc.input_ids == FT["input_ids"] and enc.labels == FT["labels"]


# -- GRPO: the RL notebook's prompt and reward -----------------------------------------------------------------

RL = ref("rl_mcq.json")


def test_google_rl_prompt_renders_as_the_notebooks(tiny_dir):
    from transformers import AutoProcessor

    from medgemma_toolkit.prompts.mcq import get_mcq_protocol

    q = RL["prompt"]
    msgs = get_mcq_protocol("google-rl").messages(q["question"], list(q["options"].items()))
    assert msgs == q["messages"]
    tok = AutoProcessor.from_pretrained(str(tiny_dir)).tokenizer  # the Gemma 3 template, as TRL ships it
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == q["rendered"]


def test_google_rl_reward_extracts_what_the_notebook_extracts():
    from medgemma_toolkit.prompts.mcq import google_rl_answer
    from medgemma_toolkit.train.rl import google_rl_reward

    for case in RL["reward_parser"]:
        assert google_rl_answer(case["response"]) == case["extracted"], case
    got = google_rl_reward([c["response"] for c in RL["reward_parser"]], ["B"] * len(RL["reward_parser"]))
    assert got == [1.0 if c["extracted"] == "B" else 0.0 for c in RL["reward_parser"]]


def test_rl_recipes_are_data():
    from medgemma_toolkit.train.rl import get_rl_recipe

    nb = get_rl_recipe("notebook")
    assert (
        nb.learning_rate,
        nb.lora_r,
        nb.lora_alpha,
        nb.max_completion_length,
        nb.num_generations,
        nb.batch_size,
        nb.grad_accum,
        nb.prompt,
        nb.reward,
    ) == (5e-6, 64, 64, 1024, 4, 3, 4, "google-rl", "google-rl")
    tk = get_rl_recipe("toolkit")
    assert (tk.learning_rate, tk.lora_r, tk.max_completion_length, tk.prompt) == (2e-4, 16, 256, "toolkit")


@pytest.mark.slow
def test_notebook_lora_learns_on_a_plain_tiny_checkpoint(tiny_dir, tmp_path):
    """Issue 11's check: with lm_head and embed_tokens trained, even a freshly initialised tiny checkpoint (no
    rescaled embeddings) learns a two-class folder: the loss falls by at least 30% within 40 steps."""
    import random

    from PIL import Image

    from medgemma_toolkit.train.sft import FinetuneSettings, run_finetune

    rng = random.Random(1)
    for name, color in {"edema": (40, 40, 210), "normal": (210, 40, 40)}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(8):
            im = Image.new("RGB", (40 + rng.randrange(24), 32 + rng.randrange(24)), color)
            for _ in range(40):
                im.putpixel((rng.randrange(im.width), rng.randrange(im.height)), (255, 255, 255))
            im.save(tmp_path / "data" / name / f"{i}.png")
    r = run_finetune(
        FinetuneSettings(
            model=str(tiny_dir),
            data=str(tmp_path / "data"),
            out=str(tmp_path / "run"),
            recipe="cpu-small",
            overrides={"max_steps": 40, "learning_rate": 5e-3},
            val_fraction=0,
            device="cpu",
            quiet=True,
        )
    )
    assert r.steps == 40 and r.last_loss <= 0.7 * r.first_loss, (r.first_loss, r.last_loss)


def test_google_rl_is_an_eval_protocol_too(tiny_dir):
    """`medgemma eval --task medqa_google_rl --think` asks exactly what the RL notebook asks."""
    from transformers import AutoProcessor

    from medgemma_toolkit.eval.items import EvalItem
    from medgemma_toolkit.eval.kinds import expand_units
    from medgemma_toolkit.eval.parsers import PARSERS
    from medgemma_toolkit.eval.spec import get_task
    from medgemma_toolkit.prompts.presets import get_preset
    from medgemma_toolkit.prompts.render import render_with

    spec = get_task("medqa_google_rl")
    q = RL["prompt"]
    [unit] = expand_units(spec, [EvalItem("x", "x:1", question=q["question"], options=dict(q["options"]), answer="A")])
    prompt = get_preset("plain").build(unit.text, think=True)  # eval's chat preset; --think adds the system text
    assert render_with(AutoProcessor.from_pretrained(str(tiny_dir)), prompt) == q["rendered"]
    for case in RL["reward_parser"]:
        assert PARSERS[spec.parser](case["response"], dict(q["options"])) == case["extracted"]
