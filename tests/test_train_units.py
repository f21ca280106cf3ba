"""Fine-tuning pieces that need no training run: label masking on a real batch, checkpoint selection, the GRPO
reward, the loss log and curve, recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.prompts.mcq import get_mcq_protocol
from medgemma_toolkit.train import checkpoints as ck
from medgemma_toolkit.train.logs import plot_curve, read_log, truncate_log
from medgemma_toolkit.train.recipe import RECIPES, get_recipe
from medgemma_toolkit.train.rl import MCQ, final_answer_reward, parse_final


# -- labels --------------------------------------------------------------------------------------------------
def test_labels_mask_prompt_image_tokens_and_padding(tiny_model_dir, tmp_path):
    from transformers import AutoProcessor

    from medgemma_toolkit.prompts.presets import get_preset
    from medgemma_toolkit.train.collator import IGNORE, SFTCollator
    from medgemma_toolkit.train.data import Example

    Image.new("RGB", (30, 20), "red").save(tmp_path / "r.png")
    proc = AutoProcessor.from_pretrained(str(tiny_model_dir))
    tok = proc.tokenizer
    examples = [
        Example("What does this image show?", "edema", (str(tmp_path / "r.png"),)),
        Example("A much longer question so that the other row needs padding at its end?", "normal pleural effusion"),
    ]
    col = SFTCollator(examples, proc, tok, get_preset("medgemma-v1"), 64)
    batch = col([{"index": 0}, {"index": 1}])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert "token_type_ids" in batch and int(batch["token_type_ids"][0].sum()) == 16  # 16 soft tokens, bidirectional
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    soft = tok.convert_tokens_to_ids("<image_soft_token>")
    image_ids = {soft, tok.convert_tokens_to_ids("<start_of_image>"), tok.convert_tokens_to_ids("<end_of_image>")}
    assert image_ids <= col.masked_ids
    for row, answer in enumerate(["edema", "normal pleural effusion"]):
        kept = [(i, t) for i, t in enumerate(labels[row].tolist()) if t != IGNORE]
        # The supervised tokens are exactly the answer and its end-of-turn, at the end of the real tokens.
        assert tok.decode([t for _, t in kept]).startswith(f"{answer}<end_of_turn>")
        assert eot in [t for _, t in kept]
        assert all(labels[row, i] == ids[row, i] for i, _ in kept)
        n_real = int(mask[row].sum())
        assert kept[-1][0] == n_real - 1
        prompt_len = kept[0][0]
        assert tok.decode(ids[row, :prompt_len].tolist()).endswith("<start_of_turn>model\n")
        assert (labels[row, :prompt_len] == IGNORE).all()  # the whole prompt, system text and question
        assert (labels[row, n_real:] == IGNORE).all() and (ids[row, n_real:] == tok.pad_token_id).all()
        assert not any(t in image_ids for _, t in kept)
    # The image row's soft tokens are present in the input but never in the labels.
    assert int((ids[0] == soft).sum()) == 16
    assert int((labels == soft).sum()) == 0


def test_prompt_matches_what_inference_renders(tiny_model, tmp_path):
    """Training text for the prompt is byte-identical to what `ask` feeds the model."""
    from medgemma_toolkit.train.collator import SFTCollator
    from medgemma_toolkit.train.data import Example

    Image.new("RGB", (30, 20), "blue").save(tmp_path / "b.png")
    be = tiny_model.backend
    col = SFTCollator([], be.processor, be.tokenizer, tiny_model.preset, be.info.image_size)
    ex = Example("Describe.", "ok", (str(tmp_path / "b.png"),))
    head, tail = col.render(col.prompt_for(ex), ex.answer)
    req = tiny_model.request("Describe.", [str(tmp_path / "b.png")])
    assert head == be.render(req.prompt)
    assert tail == "ok<end_of_turn>\n"


# -- checkpoints ---------------------------------------------------------------------------------------------
def _fake_checkpoint(root: Path, step: int) -> Path:
    staged = root / f"{ck.STAGING_PREFIX}{step}" / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    (staged / "adapter_model.safetensors").write_bytes(b"x" * 100)
    return ck.publish(staged, root, step, keep=2)


def test_only_complete_checkpoints_are_resumed_and_rotation_keeps_the_newest(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    for step in (2, 4, 6):
        _fake_checkpoint(root, step)
    assert [s for s, _ in ck.complete_checkpoints(root)] == [4, 6]  # keep=2
    # A save killed midway: staged but never renamed, and a folder with no (or a wrong) marker.
    (root / f"{ck.STAGING_PREFIX}8" / "checkpoint-8").mkdir(parents=True)
    (root / "checkpoint-10").mkdir()
    (root / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"half")
    (root / "checkpoint-12").mkdir()
    (root / "checkpoint-12" / ck.MARKER).write_text(json.dumps({"step": 11}))
    assert ck.latest_checkpoint(root).name == "checkpoint-6"
    removed = ck.discard_incomplete(root)
    assert sorted(removed) == sorted([f"{ck.STAGING_PREFIX}8", "checkpoint-10", "checkpoint-12"])
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4", "checkpoint-6"]


# -- GRPO reward -------------------------------------------------------------------------------------------------
def test_final_answer_reward_on_crafted_completions():
    completions = [
        "The heart pumps blood.\nFinal Answer: A",  # correct, well formed
        "Final Answer: B",  # well formed, wrong
        [{"role": "assistant", "content": "reasoning...\nfinal answer: (a)."}],  # chat form, case, parentheses
        "Final Answer: A\nbut maybe B",  # not last
        "Final Answer: A\nFinal Answer: B",  # two answers
        "The answer is A",  # no final line
        "Final Answer: Z",  # not an option
        "",
    ]
    rewards = final_answer_reward(completions, ["A"] * len(completions), letters=["ABC"] * len(completions))
    assert rewards == [1.2, 0.2, 1.2, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert parse_final("x\nFinal Answer: c", "ABC") == "C"
    q = MCQ("Which?", (("A", "heart"), ("B", "lung")), "A")
    prompt = get_mcq_protocol("toolkit").user_text(q.question, list(q.options))  # what rl sends with --recipe toolkit
    assert prompt.startswith("Which?\n(A) heart\n(B) lung\n") and "Final Answer: X" in prompt


# -- loss log, curve, recipes ----------------------------------------------------------------------------------
def test_loss_log_truncates_to_the_resumed_step_and_plots(tmp_path):
    log = tmp_path / "loss_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 5.0 / s}) + "\n" for s in range(1, 9)) + '{"step": 9, "lo')
    assert [r["step"] for r in read_log(log)] == list(range(1, 9))  # a line cut by a kill is skipped
    truncate_log(log, 6)
    assert [r["step"] for r in read_log(log)] == list(range(1, 7))
    png = plot_curve(read_log(log), tmp_path / "curve.png")
    im = Image.open(png)
    assert im.size == (640, 400)
    assert len(set(im.convert("RGB").getdata())) > 2  # axes and a curve were drawn


def test_default_recipe_is_the_notebooks_and_overrides_validate():
    r = get_recipe("notebook")
    assert (r.lora_r, r.lora_alpha, r.lora_dropout, r.learning_rate, r.warmup_ratio, r.max_grad_norm) == (
        16,
        16,
        0.05,
        2e-4,
        0.03,
        0.3,
    )
    assert r.gradient_checkpointing and set(RECIPES) >= {"notebook", "answer-only", "cpu-small"}
    # the notebook's LoRA and loss; answer-only keeps the toolkit's earlier recipe as a named choice
    assert (r.target_modules, r.modules_to_save, r.loss_on, r.layout_preset) == (
        "all-linear",
        ("lm_head", "embed_tokens"),
        "conversation",
        "finetune-notebook",
    )
    ao = get_recipe("answer-only")
    assert ao.loss_on == "answer" and ao.modules_to_save == () and ao.layout_preset is None
    assert "vision_tower" in ao.target_modules  # a regex that excludes the vision tower
    assert r.with_overrides(lora_r=8, learning_rate=None).lora_r == 8
    with pytest.raises(BadInput):
        r.with_overrides(learning_rate=-1.0)
    with pytest.raises(BadInput, match="unknown recipe"):
        get_recipe("nope")


# -- device fit ------------------------------------------------------------------------------------------------
def test_memory_estimate_refuses_a_model_that_cannot_fit(tmp_path):
    """A checkpoint whose safetensors header declares 10^12 parameters: refused before anything is loaded."""
    import struct

    from medgemma_toolkit.errors import BackendUnavailable
    from medgemma_toolkit.train.fit import check_fits, checkpoint_params

    header = json.dumps({"w": {"dtype": "BF16", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 0]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert checkpoint_params(tmp_path) == 10**12
    with pytest.raises(BackendUnavailable, match=r"needs about .* GiB, but only .* GiB available RAM is free"):
        check_fits(tmp_path, "cpu", "float32", "lora")
    with pytest.raises(BackendUnavailable, match="qlora needs a CUDA GPU"):
        check_fits(tmp_path, "cpu", "float32", "qlora")
    small = json.dumps({"w": {"dtype": "F32", "shape": [10, 10], "data_offsets": [0, 400]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(small)) + small + b"\0" * 400)
    fit = check_fits(tmp_path, "cpu", "float32", "lora")
    assert fit["params"] == 100 and fit["free_gib"] > fit["estimated_gib"] > 0


def test_chat_examples_and_base_model_prompts_train_on_the_answer_only(tiny_model_dir, tmp_path):
    from transformers import AutoProcessor

    from medgemma_toolkit.prompts.presets import get_preset
    from medgemma_toolkit.train.collator import IGNORE, SFTCollator
    from medgemma_toolkit.train.data import ChatImage, Example, Turn

    Image.new("RGB", (30, 20), "green").save(tmp_path / "g.png")
    proc = AutoProcessor.from_pretrained(str(tiny_model_dir))
    tok = proc.tokenizer
    chat = Example(
        "",
        "Clear lungs.",
        turns=(
            Turn("system", ("Be brief.",)),
            Turn("user", (ChatImage(str(tmp_path / "g.png")), "Describe.")),
            Turn("assistant", ("An X-ray.",)),
            Turn("user", ("Any effusion?",)),
        ),
    )
    col = SFTCollator([chat], proc, tok, get_preset("medgemma-v1"), 64)
    b = col([{"index": 0}])
    text = tok.decode(b["input_ids"][0])
    # The user's own order (image, then text), the earlier turns, and no preset system prompt added.
    assert (
        text.index("<start_of_image>") < text.index("Describe.") < text.index("An X-ray.") < text.index("Any effusion?")
    )
    assert "expert radiologist" not in text and "Be brief." in text
    kept = [t for t in b["labels"][0].tolist() if t != IGNORE]
    assert tok.decode(kept) == "Clear lungs.<end_of_turn>\n"  # earlier assistant turns are context, not targets
    # Base (-pt) checkpoints: completion prompt, the answer after "Answer:", ended where the preset's stops cut.
    base = SFTCollator([Example("Is there cardiomegaly?", "no")], proc, tok, get_preset("pretrained"), 64)
    b = base([{"index": 0}])
    kept = [t for t in b["labels"][0].tolist() if t != IGNORE]
    assert tok.decode(kept) == " no\n\n"
    # Tokenised with the tokenizer's own special tokens, as the backend does for completion prompts.
    assert (
        tok.decode(b["input_ids"][0]).removeprefix("<bos>").startswith("Question: Is there cardiomegaly?\nAnswer: no")
    )


def test_one_device_shim_still_reaches_the_trainers_gpu_count(tmp_path):
    """`one_device` sets TrainingArguments' private `_n_gpu` (no public setter exists): if a transformers release
    renames or stops reading it, this fails here rather than a multi-GPU run splitting batches apart."""
    from transformers import TrainingArguments

    from medgemma_toolkit.train.model import one_device

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.n_gpu == 0 and "_n_gpu" in vars(args), "transformers no longer keeps the GPU count in _n_gpu"
    args._n_gpu = 3  # what a process that saw three GPUs holds
    assert args.n_gpu == 3, "TrainingArguments.n_gpu no longer reads _n_gpu: revisit train/model.one_device"
    assert one_device(args).n_gpu == 1
