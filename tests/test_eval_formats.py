"""Readers for the public formats and the generic one, bad rows with file:line, records that survive a torn write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.eval.formats import RowError, read_items
from medgemma_toolkit.eval.kinds import expand_units
from medgemma_toolkit.eval.records import RecordLog, ResultCache, read_records
from medgemma_toolkit.eval.runner import _conditions
from medgemma_toolkit.eval.spec import builtin_tasks, get_task, sample_path

EXPECTED = {  # task: (items, questions, rows deliberately not used)
    "medqa": (12, 12, 0),
    "medqa_google_rl": (12, 12, 0),
    "medmcqa": (12, 12, 0),
    "pubmedqa": (12, 12, 0),
    "mmlu_med": (12, 12, 0),
    "medxpertqa": (12, 12, 0),
    "afrimedqa": (12, 12, 1),
    "vqa_rad": (12, 12, 0),
    "slake": (12, 12, 12),
    "image_mcq": (12, 12, 0),
    "cxr_classification": (12, 54, 0),
    "report_generation": (12, 12, 0),
}


def test_every_builtin_task_reads_its_sample():
    tasks = builtin_tasks()
    assert set(tasks) == set(EXPECTED)
    for name, spec in tasks.items():
        conds = _conditions(spec, None)
        res = read_items(spec, Path(str(sample_path(spec))), conditions=conds)
        units = expand_units(spec, res.items, conds)
        assert (len(res.items), len(units), res.skipped) == EXPECTED[name], name
        assert len({u.key for u in units}) == len(units)
        assert all(len(u.prompt_hash) == 16 for u in units)


def test_public_formats_map_gold_answers():
    def first(task):
        spec = get_task(task)
        return read_items(spec, Path(str(sample_path(spec)))).items[0]

    # the shared first question's correct option is C ("Vitamin C") in every text format
    for task in ("medqa", "medmcqa", "mmlu_med", "medxpertqa", "afrimedqa"):
        it = first(task)
        assert it.answer == "C" and it.options["C"] == "Vitamin C", task
    assert len(first("medxpertqa").options) == 10
    assert len(first("afrimedqa").options) == 5
    pub = first("pubmedqa")
    assert pub.options == {"A": "yes", "B": "no", "C": "maybe"} and pub.answer == "A"
    assert pub.question.startswith("Context: ")
    vqa = first("vqa_rad")
    assert vqa.answer_type == "closed" and Path(vqa.images[0]).is_file()


def test_medmcqa_hf_copy_is_zero_based(tmp_path):
    spec = get_task("medmcqa")
    row = {"id": "x", "question": "q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2}
    (tmp_path / "dev.json").write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "y"}) + "\n")
    assert read_items(spec, tmp_path / "dev.json").items[0].answer == "B"  # GitHub release: 1-based
    import datasets

    datasets.Dataset.from_list([row]).save_to_disk(str(tmp_path / "hf"))
    assert read_items(spec, tmp_path / "hf").items[0].answer == "C"  # Hugging Face copy: 0-based


def test_generic_csv_and_jsonl_for_own_data(tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16), "white").save(tmp_path / "a.png")
    (tmp_path / "own.csv").write_text(
        "id,question,options,answer,image\n"
        'q1,Which?,"[""x"", ""y"", ""z""]",y,a.png\n'
        'q2,Which?,"{""A"": ""x"", ""B"": ""y""}",A,a.png\n'
    )
    items = read_items(get_task("image_mcq"), tmp_path / "own.csv").items
    assert [(i.id, i.answer, len(i.options)) for i in items] == [("q1", "B", 3), ("q2", "A", 2)]
    assert items[0].images == [str(tmp_path / "a.png")]


def test_a_task_that_requires_images_skips_rows_without_one_and_text_mcq_does_not(tmp_path):
    """The requirement is the task's declared `requires_images`, not its name."""
    from PIL import Image

    Image.new("RGB", (16, 16), "white").save(tmp_path / "a.png")
    (tmp_path / "own.csv").write_text(
        'id,question,options,answer,image\nq1,Which?,"[""x"", ""y""]",y,a.png\nq2,Which?,"[""x"", ""y""]",x,\n'
    )
    assert get_task("image_mcq").requires_images and not get_task("medqa").requires_images
    read = read_items(get_task("image_mcq"), tmp_path / "own.csv", on_error="skip")
    assert [i.id for i in read.items] == ["q1"]
    assert any("an image question needs an image path" in e for e in read.errors)


def test_mmlu_folder_reads_only_medical_subjects():
    spec = get_task("mmlu_med")
    items = read_items(spec, Path(str(sample_path(spec)))).items
    assert not any("Sun" in i.question for i in items)  # astronomy_test.csv is left out
    assert items[0].id.startswith("anatomy-")


def test_cxr14_finding_labels(tmp_path):
    from PIL import Image

    Image.new("L", (16, 16)).save(tmp_path / "0001.png")
    Image.new("L", (16, 16)).save(tmp_path / "0002.png")
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Patient Age\n0001.png,Cardiomegaly|Effusion,60\n0002.png,No Finding,40\n"
    )
    spec = get_task("cxr_classification")
    conds = _conditions(spec, "cxr14")
    items = read_items(spec, tmp_path / "Data_Entry_2017.csv", conditions=conds).items
    # CXR14 writes "Effusion" for pleural effusion: mapped by the task's label_names, not scored "no"
    assert items[0].labels["Cardiomegaly"] and items[0].labels["Pleural Effusion"] and not items[0].labels["Edema"]
    assert not any(items[1].labels.values())
    assert len(expand_units(spec, items, conds)) == 2 * len(conds)
    assert _conditions(spec, "Edema, Pleural Effusion") == ("Edema", "Pleural Effusion")


def test_cheXpert_uncertain_and_blank_labels_are_not_asked():
    spec = get_task("cxr_classification")
    conds = spec.conditions()
    items = read_items(spec, Path(str(sample_path(spec))), conditions=conds).items
    assert "Atelectasis" not in items[1].labels  # blank
    assert "Atelectasis" not in items[3].labels  # -1 (uncertain)
    assert items[1].labels["Cardiomegaly"] is True


def test_malformed_row_names_file_and_line(tmp_path):
    spec = get_task("medqa")
    good = {"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "answer_idx": "Z"}),
        json.dumps({"options": {"A": "1", "B": "2"}, "answer_idx": "A"}),
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RowError, match=r"^d\.jsonl:2: not valid JSON"):
        read_items(spec, tmp_path / "d.jsonl")
    res = read_items(spec, tmp_path / "d.jsonl", on_error="skip")
    assert len(res.items) == 1
    assert [e.split(":")[1] for e in res.errors] == ["2", "3", "4"]
    assert "missing field 'question'" in res.errors[2]


def test_missing_image_empty_dataset_unknown_task(tmp_path):
    (tmp_path / "v.jsonl").write_text(json.dumps({"question": "q", "answer": "yes", "image": "nope.png"}) + "\n")
    with pytest.raises(RowError, match="v.jsonl:1: image file not found: nope.png"):
        read_items(get_task("vqa_rad"), tmp_path / "v.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BadInput, match="no usable items"):
        read_items(get_task("medqa"), tmp_path / "empty.jsonl")
    with pytest.raises(BadInput, match="unknown task 'medqaa'"):
        get_task("medqaa")
    with pytest.raises(BadInput, match="data file not found"):
        read_items(get_task("medqa"), tmp_path / "missing.jsonl")


def test_task_yaml_file_is_validated(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(
        "name: t\nversion: 1\ndescription: d\nkind: mcq\nreader: generic\nprompt: '{question}'\n"
        "parser: final_answer\nmetrics: [accuracy]\nprimary_metric: accuracy\nbogus: 1\n"
    )
    with pytest.raises(BadInput, match="unknown task field"):
        get_task(str(p))
    p.write_text(p.read_text().replace("bogus: 1\n", ""))
    assert get_task(str(p)).label == "t@1"


def test_record_log_drops_torn_tail_and_resumes(tmp_path):
    path = tmp_path / "records.jsonl"
    log = RecordLog(path, resume=False)
    log.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    log.close()
    with open(path, "a") as f:
        f.write('{"key": "c", "v"')  # killed mid-write
    recs, good = read_records(path)
    assert [r["key"] for r in recs] == ["a", "b"]
    log = RecordLog(path, resume=True)
    assert set(log.done) == {"a", "b"}
    log.append([{"key": "c", "v": 3}])
    log.close()
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_result_cache_keys_on_configuration(tmp_path):
    c1 = ResultCache(tmp_path, {"model": "m", "task": "t@1"})
    c1.put([{"key": "k", "prompt_hash": "h", "raw": "x"}])
    c1.close()
    assert ResultCache(tmp_path, {"model": "m", "task": "t@1"}).get("k", "h")["raw"] == "x"
    assert ResultCache(tmp_path, {"model": "m", "task": "t@1"}).get("k", "other") is None
    assert ResultCache(tmp_path, {"model": "m", "task": "t@2"}).get("k", "h") is None


def test_parquet_from_a_hub_dataset_repository(tmp_path):
    import pandas as pd

    pd.DataFrame(
        [
            {
                "question": "Which organ secretes insulin?",
                "subject": "anatomy",
                "choices": ["Liver", "Pancreas", "Spleen", "Kidney"],
                "answer": 1,
            }
        ]
    ).to_parquet(tmp_path / "test.parquet")
    item = read_items(get_task("mmlu_med"), tmp_path / "test.parquet").items[0]
    assert item.options["B"] == "Pancreas" and item.answer == "B"  # 0-based index in the HF copy


def test_image_paths_resolve_beside_the_file_before_release_folders(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    rows = [
        {"id": "1", "question": "q", "answer": "yes", "image": "images/a.png"},  # path relative to the file
        {"id": "2", "question": "q", "answer": "no", "image": "a.png"},
    ]  # inside the release's image folder
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_items(get_task("vqa_rad"), tmp_path / "d.jsonl").items
    assert [Path(i.images[0]).resolve() for i in items] == [(tmp_path / "images" / "a.png").resolve()] * 2


def test_batch_renders_options_as_eval_does(tmp_path):
    from medgemma_toolkit.batch.run import read_batch_rows

    rows = [
        {"id": "a", "question": "Which organ secretes insulin?", "options": ["Liver", "Pancreas", "Spleen"]},
        {"id": "b", "question": "Which?", "options": '{"A": "x", "B": "y"}'},
        {"id": "c", "question": "No options here."},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = {r.id: r.question for r in read_batch_rows(tmp_path / "in.jsonl", "fail")}
    from dataclasses import replace

    spec = replace(get_task("medqa"), reader="generic")  # eval's prompt: "{question}\n\n{options}\n\n..."
    (tmp_path / "e.jsonl").write_text(json.dumps({**rows[0], "answer": "B"}) + "\n")
    unit = expand_units(spec, read_items(spec, tmp_path / "e.jsonl").items)[0]
    assert got["a"] == "Which organ secretes insulin?\n\nA. Liver\nB. Pancreas\nC. Spleen"
    assert unit.text.startswith(got["a"] + "\n\n")
    assert got["b"] == "Which?\n\nA. x\nB. y" and got["c"] == "No options here."
