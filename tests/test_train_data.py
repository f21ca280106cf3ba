"""Training data sources, bad-row reporting and the validation split (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.train.data import load_dataset, split_validation
from medgemma_toolkit.train.provenance import data_hash


def _png(path: Path, color=(200, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), color).save(path)
    return path


def test_class_folder_gives_class_name_answers_and_stratified_split(tmp_path):
    for c in ("edema", "normal", "effusion"):
        for i in range(5):
            _png(tmp_path / "cls" / c / f"{i}.png")
    (tmp_path / "cls" / "normal" / "notes.txt").write_text("ignored")
    ds = load_dataset(tmp_path / "cls", "classification", val_fraction=0.2, seed=1)
    assert ds.kind == "class-folder" and ds.classes == ("edema", "effusion", "normal")
    assert len(ds.train) == 12 and len(ds.val) == 3
    assert sorted(ex.answer for ex in ds.val) == ["edema", "effusion", "normal"]  # one per class
    ex = ds.train[0]
    assert "edema, effusion, normal" in ex.question and Path(ex.images[0]).is_file()
    again = load_dataset(tmp_path / "cls", "classification", val_fraction=0.2, seed=1)
    assert [e.origin for e in again.val] == [e.origin for e in ds.val]  # reproducible for a seed


def test_csv_rows_resolve_images_relative_to_the_file(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png")
    (tmp_path / "rows.csv").write_text(
        "image,question,answer\nimg/a.png,Is there an effusion?,yes\nimg/a.png;img/b.png,Compare.,unchanged\n"
    )
    ds = load_dataset(tmp_path / "rows.csv", "vqa", val_fraction=0)
    assert [e.answer for e in ds.train] == ["yes", "unchanged"]
    assert len(ds.train[1].images) == 2 and all(Path(p).is_absolute() for p in ds.train[1].images)
    assert ds.train[0].origin == "rows.csv:2"


def test_jsonl_rows_and_chat_messages(tmp_path):
    _png(tmp_path / "x.png")
    lines = [
        {"image": "x.png", "question": "What is shown?", "answer": "a chest"},
        {"question": "What is a normal heart rate?", "answer": "60 to 100"},
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = load_dataset(tmp_path / "qa.jsonl", "vqa", val_fraction=0)
    assert ds.kind == "rows" and ds.train[1].images == ()
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "Describe."}]},
            {"role": "assistant", "content": "Clear lungs."},
        ]
    }
    (tmp_path / "chat.jsonl").write_text(json.dumps(chat) + "\n")
    ds = load_dataset(tmp_path / "chat.jsonl", "chat", val_fraction=0)
    ex = ds.train[0]
    assert ds.kind == "chat" and ex.answer == "Clear lungs."
    assert [t.role for t in ex.turns] == ["system", "user"] and ex.turns[1].parts[1] == "Describe."
    assert Path(ex.turns[1].parts[0].ref) == tmp_path / "x.png"  # an image part, not text


def test_bad_rows_are_reported_with_line_numbers(tmp_path):
    _png(tmp_path / "ok.png")
    text = "\n".join(
        [
            json.dumps({"image": "ok.png", "question": "q", "answer": "a"}),
            "{not json",
            json.dumps({"image": "missing.png", "question": "q", "answer": "a"}),
            json.dumps({"image": "ok.png", "question": "q"}),
        ]
    )
    (tmp_path / "bad.jsonl").write_text(text)
    with pytest.raises(BadInput) as e:
        load_dataset(tmp_path / "bad.jsonl", "vqa")
    msg = str(e.value)
    assert "3 bad row(s)" in msg and "line 2: not valid JSON" in msg
    assert "line 3: image not found: missing.png" in msg and "line 4: missing 'answer'" in msg
    (tmp_path / "bad.csv").write_text("image,question,answer\nok.png,q,a\nok.png,q,\n")
    with pytest.raises(BadInput, match="line 3: missing 'answer'"):
        load_dataset(tmp_path / "bad.csv", "vqa")


def test_local_hf_dataset_with_validation_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    feats = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"image": [red, blue], "question": ["Colour?"] * 2, "answer": ["red", "blue"]}, features=feats
            ),
            "validation": datasets.Dataset.from_dict(
                {"image": [red], "question": ["Colour?"], "answer": ["red"]}, features=feats
            ),
        }
    )
    dd.save_to_disk(str(tmp_path / "hf"))
    ds = load_dataset(tmp_path / "hf", "vqa")
    assert ds.kind == "hf-dataset" and len(ds.train) == 2 and len(ds.val) == 1
    assert isinstance(ds.train[0].images[0], Image.Image) and ds.train[1].answer == "blue"


def test_separate_validation_file_and_split_edge_cases(tmp_path):
    for c in ("a", "b"):
        for i in range(3):
            _png(tmp_path / "train" / c / f"{i}.png")
            _png(tmp_path / "val" / c / f"{i}.png")
    ds = load_dataset(tmp_path / "train", "classification", val_data=tmp_path / "val")
    assert len(ds.train) == 6 and len(ds.val) == 6
    with pytest.raises(BadInput, match="below 1"):
        split_validation(ds.train, 1.0, 0, True)
    with pytest.raises(BadInput, match="at least two sub-folders"):
        load_dataset(tmp_path / "train" / "a", "classification")


def test_data_hash_covers_image_bytes(tmp_path):
    p = _png(tmp_path / "c" / "a" / "0.png")
    _png(tmp_path / "c" / "b" / "0.png")
    h1 = data_hash(load_dataset(tmp_path / "c", "classification", val_fraction=0).train)
    _png(p, color=(0, 0, 1))  # same name, different pixels
    h2 = data_hash(load_dataset(tmp_path / "c", "classification", val_fraction=0).train)
    assert h1 != h2 and len(h1) == 64
