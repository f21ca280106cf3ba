"""Each benchmark release read as published: fixtures under tests/fixtures/releases/ are shaped exactly like the
real files (same keys, nesting, header, path layout, label encoding; sources in that folder's README.md), plus the
common Hugging Face copies with their own column names, and every "Done when" file run through `medgemma eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.eval.formats import RowError, read_ids, read_items
from medgemma_toolkit.eval.kinds import expand_units
from medgemma_toolkit.eval.rows import parse_hf_spec
from medgemma_toolkit.eval.runner import _conditions
from medgemma_toolkit.eval.spec import get_task

REL = Path(__file__).parent / "fixtures" / "releases"
MXQ = REL / "medxpertqa" / "eval" / "data" / "medxpertqa" / "input"


def read(task: str, path: Path, conditions: str | None = None, **kw):
    spec = get_task(task)
    conds = _conditions(spec, conditions)
    return read_items(spec, path, conditions=conds, **kw), spec, conds


# -- PubMedQA ---------------------------------------------------------------------------------------------------------
def test_pubmedqa_ori_pqal_and_its_official_test_split():
    res, spec, _ = read("pubmedqa", REL / "pubmedqa/data/ori_pqal.json")
    assert [i.id for i in res.items] == ["21645374", "16418930", "9488747", "17208539", "10808977", "23831910"]
    first = res.items[0]
    assert first.answer == "A" and first.question.startswith("Context: Programmed cell death (PCD)")
    assert first.question.endswith(
        "Question: Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
    )
    # --split test: the 500 PMIDs shipped from test_ground_truth.json; two of these six rows are not test items
    test = read("pubmedqa", REL / "pubmedqa/data/ori_pqal.json", split="test")[0]
    truth = json.loads((REL / "pubmedqa/data/test_ground_truth.json").read_text())
    assert {i.id for i in test.items} == set(truth) and test.selection["rows_outside_selection"] == 2
    assert {i.id: {"A": "yes", "B": "no", "C": "maybe"}[i.answer] for i in test.items} == truth
    # the same selection from the release's own answer key given as --ids
    by_ids = read(
        "pubmedqa", REL / "pubmedqa/data/ori_pqal.json", ids=read_ids(REL / "pubmedqa/data/test_ground_truth.json")
    )[0]
    assert [i.id for i in by_ids.items] == [i.id for i in test.items]


def test_pubmedqa_shipped_test_split_has_the_500_release_ids():
    from importlib.resources import files

    ids = read_ids(Path(str(files("medgemma_toolkit.eval").joinpath("splits/pubmedqa_test.txt"))))
    assert len(ids) == len(set(ids)) == 500
    assert set(json.loads((REL / "pubmedqa/data/test_ground_truth.json").read_text())) <= set(ids)


def test_pubmedqa_answer_key_as_data_says_to_use_ids():
    with pytest.raises(BadInput, match="that is a split, not a data file; pass it as --ids"):
        read("pubmedqa", REL / "pubmedqa/data/test_ground_truth.json")


# -- MedXpertQA -------------------------------------------------------------------------------------------------------
def test_medxpertqa_text_input_letter_content_options_and_list_label():
    res, spec, _ = read("medxpertqa", MXQ / "medxpertqa_text_input.jsonl")
    it = res.items[0]
    assert it.id == "Text-20" and it.answer == "J" and len(it.options) == 10
    assert it.options["J"] == "Bacterial destruction"
    # the question already ends with its "Answer Choices: (A) ..."; the prompt does not list them a second time
    text = expand_units(spec, [it])[0].text
    assert text.count("Bacterial destruction") == 1 and "\n\n\n" not in text
    assert text.endswith("where X is the letter of that option.")


def test_medxpertqa_mm_images_and_split_by_id():
    with pytest.raises(RowError, match="image file not found: MM-179-a.jpeg .*--images"):
        read("medxpertqa", MXQ / "medxpertqa_mm_input.jsonl")
    res = read("medxpertqa", MXQ / "medxpertqa_mm_input.jsonl", image_root=REL / "medxpertqa/eval/images")[0]
    assert [Path(i.images[0]).name for i in res.items] == ["MM-179-a.jpeg", "MM-1571-a.jpeg"]
    with pytest.raises(BadInput, match="2 outside the chosen split"):
        read("medxpertqa", MXQ / "medxpertqa_mm_input.jsonl", image_root=REL / "medxpertqa/eval/images", split="text")


def test_medxpertqa_several_labels_are_skipped_with_a_reason(tmp_path):
    row = json.loads((MXQ / "medxpertqa_text_input.jsonl").read_text().splitlines()[0])
    (tmp_path / "m.jsonl").write_text(
        json.dumps({**row, "label": ["A", "J"]}) + "\n" + json.dumps({**row, "id": "Text-x"}) + "\n"
    )
    res = read("medxpertqa", tmp_path / "m.jsonl")[0]
    assert [i.id for i in res.items] == ["Text-x"]
    assert res.skip_reasons == {"several correct options (single-answer task)": 1}


# -- AfriMed-QA -------------------------------------------------------------------------------------------------------
def test_afrimedqa_multi_answer_na_options_whitespace_and_non_mcq():
    res = read("afrimedqa", REL / "afrimedqa/sample_10.csv")[0]
    assert [i.id for i in res.items] == ["a1f0", "c3d2"]
    assert res.skip_reasons == {
        "several correct options (single-answer task)": 1,
        "saq question (not multiple choice)": 1,
        "consumer_queries question (not multiple choice)": 1,
    }
    a, c = res.items
    assert list(a.options) == ["A", "B", "C", "D"] and a.answer == "C"  # option5 "N/A" is not an option
    assert a.options["C"].startswith("She should undergo evaluation")
    assert c.question == "Which vitamin deficiency causes rickets?" and "n/a" not in c.options.values()
    test = read("afrimedqa", REL / "afrimedqa/sample_10.csv", split="test")[0]
    assert [i.id for i in test.items] == ["a1f0"]


# -- MedQA ------------------------------------------------------------------------------------------------------------
def test_medqa_us_4_options_test_file_and_split_by_file():
    d = REL / "medqa/data_clean/questions/US/4_options"
    res = read("medqa", d / "phrases_no_exclude_test.jsonl", split="test")[0]
    assert [(i.answer, i.options[i.answer]) for i in res.items] == [("D", "Nitrofurantoin"), ("C", "Vitamin C")]
    with pytest.raises(BadInput, match=r"the test split of medqa is its own file \(\*test\*\)"):
        read("medqa", d / "phrases_no_exclude_dev.jsonl", split="test")


# -- MedMCQA ----------------------------------------------------------------------------------------------------------
def test_medmcqa_json_lines_one_row_file_and_unlabelled_test():
    res = read("medmcqa", REL / "medmcqa/dev.json")[0]
    assert [i.answer for i in res.items] == ["A", "B"]  # cop 1-4 in the release
    one = read("medmcqa", REL / "medmcqa/one_row.json")[0]
    assert len(one.items) == 1 and one.items[0].id == "45258d3d-b974-44dd-a161-c3fccbdadd88"
    with pytest.raises(BadInput, match=r"2 skipped: unlabelled"):
        read("medmcqa", REL / "medmcqa/test.json")


def test_medmcqa_hf_copy_zero_based_and_unlabelled(tmp_path):
    import datasets

    rows = [json.loads(x) for x in (REL / "medmcqa/dev.json").read_text().splitlines()]
    hf = [{**rows[0], "cop": 0}, {**rows[1], "cop": -1}]  # openlifescienceai/medmcqa: 0-3, test rows -1
    datasets.Dataset.from_list(hf).save_to_disk(str(tmp_path / "hf"))
    res = read("medmcqa", tmp_path / "hf")[0]
    assert [i.answer for i in res.items] == ["A"] and sum(res.skip_reasons.values()) == 1


# -- MMLU -------------------------------------------------------------------------------------------------------------
def test_mmlu_release_folder_headerless_csvs_medical_subjects_only():
    for path in (REL / "mmlu/data/test", REL / "mmlu/data"):
        res = read("mmlu_med", path)[0]
        assert [i.id for i in res.items] == ["anatomy-1", "anatomy-2", "college_medicine-1"]
    first = res.items[0]
    assert first.answer == "A" and first.options["D"].endswith("decreased salivation.")


def test_mmlu_hf_all_config_keeps_medical_subjects(tmp_path):
    import pandas as pd

    pd.DataFrame(
        [
            {
                "question": "Which bone forms the heel?",
                "subject": "anatomy",
                "choices": ["Talus", "Calcaneus", "Navicular", "Cuboid"],
                "answer": 1,
            },
            {
                "question": "Largest planet?",
                "subject": "astronomy",
                "choices": ["Mars", "Venus", "Jupiter", "Earth"],
                "answer": 2,
            },
        ]
    ).to_parquet(tmp_path / "t.parquet")
    res = read("mmlu_med", tmp_path / "t.parquet")[0]
    assert [(i.answer, i.options["B"]) for i in res.items] == [("B", "Calcaneus")]
    assert res.skip_reasons == {"not one of the medical subjects": 1}


# -- SLAKE / VQA-RAD --------------------------------------------------------------------------------------------------
def test_slake_test_json_english_rows_and_imgs_folder():
    res = read("slake", REL / "slake/Slake1.0/test.json")[0]
    assert [i.id for i in res.items] == ["11934", "11935", "11937"]
    assert res.skip_reasons == {"not English (q_lang)": 1}
    assert Path(res.items[0].images[0]) == REL / "slake/Slake1.0/imgs/xmlab102/source.jpg"
    assert [i.answer_type for i in res.items] == ["open", "closed", "closed"]


def test_vqa_rad_public_json_test_split_and_testset_copy():
    pub = REL / "vqa_rad/VQA_RAD Dataset Public.json"
    assert len(read("vqa_rad", pub)[0].items) == 4
    test = read("vqa_rad", pub, split="test")[0]
    assert [(i.id, i.answer) for i in test.items] == [("1", "No"), ("2", "2")]  # a numeric answer becomes text
    assert Path(test.items[0].images[0]).parent.name == "VQA_RAD Image Folder"
    copy = read("vqa_rad", REL / "vqa_rad/copy/testset.json")[0]
    assert [i.id for i in copy.items] == ["1", "2"]
    with pytest.raises(BadInput, match="no 'phrase_type' column .* already that split"):
        read("vqa_rad", REL / "vqa_rad/copy/testset.json", split="test")


def test_vqa_rad_hf_copy_with_embedded_images(tmp_path, monkeypatch):
    import datasets
    from PIL import Image

    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))
    feats = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    rows = {
        "image": [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")],
        "question": ["is there a mass?", "where is the lesion?"],
        "answer": ["yes", "left lung"],
    }
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows, features=feats),
            "test": datasets.Dataset.from_dict(rows, features=feats),
        }
    )
    dd.save_to_disk(str(tmp_path / "vqarad"))
    res = read("vqa_rad", tmp_path / "vqarad", split="test")[0]
    assert [i.answer_type for i in res.items] == ["closed", None]
    a, b = (Image.open(i.images[0]).convert("RGB").getpixel((0, 0)) for i in res.items)
    assert (a, b) == ((255, 0, 0), (0, 0, 255))
    with pytest.raises(BadInput, match="no split 'dev'; it has train, test"):
        read("vqa_rad", tmp_path / "vqarad", split="dev")


# -- chest X-rays -----------------------------------------------------------------------------------------------------
def test_cxr14_data_entry_with_images_folder_and_effusion_mapping():
    csv_path = REL / "cxr14/Data_Entry_2017.csv"
    with pytest.raises(RowError, match="image file not found: 00000001_000.png .*--images"):
        read("cxr_classification", csv_path)
    res, spec, conds = read("cxr_classification", csv_path, image_root=REL / "cxr14/downloads")
    assert len(res.items) == 5 and not res.warnings
    assert res.items[2].labels == {
        "Atelectasis": False,
        "Cardiomegaly": True,
        "Consolidation": False,
        "Edema": False,
        "Pleural Effusion": True,
    }  # "Cardiomegaly|Effusion"
    assert Path(res.items[0].images[0]).parts[-3:] == ("images_001", "images", "00000001_000.png")
    full = read("cxr_classification", csv_path, "cxr14", image_root=REL / "cxr14/downloads")[0]
    assert full.items[4].labels["Pleural Thickening"] and full.items[4].labels["Hernia"]  # "Pleural_Thickening"


def test_cxr14_official_test_list_as_ids_with_only_those_images_downloaded(tmp_path):
    import shutil

    # CXR14's test_list.txt names test images one per line; only those images need to be on disk
    (tmp_path / "test_list.txt").write_text("00000001_002.png\n00000003_000.png\n")
    shutil.copytree(
        REL / "cxr14/downloads/images_001/images",
        tmp_path / "images_001/images",
        ignore=lambda d, names: [n for n in names if n not in ("00000001_002.png", "00000003_000.png")],
    )
    res = read(
        "cxr_classification",
        REL / "cxr14/Data_Entry_2017.csv",
        image_root=tmp_path,
        ids=read_ids(tmp_path / "test_list.txt"),
    )[0]
    assert [i.id for i in res.items] == ["00000001_002.png", "00000003_000.png"]
    assert res.selection["rows_outside_selection"] == 3 and not res.warnings


def test_cxr14_condition_it_does_not_label_is_reported_not_scored():
    res = read(
        "cxr_classification",
        REL / "cxr14/Data_Entry_2017.csv",
        "Cardiomegaly, Lung Opacity",
        image_root=REL / "cxr14/downloads",
    )[0]
    assert res.warnings == ["Data_Entry_2017.csv (cxr14) has no label for Lung Opacity: not asked"]
    assert all(set(i.labels) == {"Cardiomegaly"} for i in res.items)


def test_chexpert_train_csv_inside_its_release_folder():
    res, spec, conds = read("cxr_classification", REL / "chexpert/CheXpert-v1.0-small/train.csv")
    # row 1: "No Finding" = 1 with the five conditions blank -> all five absent; rows 2-4: only uncertain (-1) or
    # unmentioned -> skipped with a reason, not an error; row 5: Edema 1.0
    assert [i.id.split("/")[2] for i in res.items] == ["patient00001", "patient00003"]
    assert res.items[0].labels == dict.fromkeys(conds, False)
    assert res.items[1].labels == {"Edema": True}
    assert res.skip_reasons == {"no gradable label for the conditions asked (uncertain or not mentioned)": 3}
    assert Path(res.items[0].images[0]).is_file()
    assert len(expand_units(spec, res.items, conds)) == 6


# -- Hugging Face copies and specs ------------------------------------------------------------------------------------
def test_hf_copies_with_their_own_column_names(tmp_path):
    import datasets

    pub = json.loads((REL / "pubmedqa/data/ori_pqal.json").read_text())["21645374"]
    datasets.Dataset.from_list(
        [
            {  # qiaojin/PubMedQA pqa_labeled
                "pubid": 21645374,
                "question": pub["QUESTION"],
                "context": {"contexts": pub["CONTEXTS"], "labels": pub["LABELS"], "meshes": pub["MESHES"]},
                "long_answer": pub["LONG_ANSWER"],
                "final_decision": pub["final_decision"],
            }
        ]
    ).save_to_disk(str(tmp_path / "p"))
    hf = read("pubmedqa", tmp_path / "p")[0].items[0]
    ori = read("pubmedqa", REL / "pubmedqa/data/ori_pqal.json")[0].items[0]
    assert (hf.id, hf.question, hf.answer) == (ori.id, ori.question, ori.answer)
    assert read("pubmedqa", tmp_path / "p", split="test")[0].items[0].id == "21645374"  # PMID in the test split

    row = json.loads((MXQ / "medxpertqa_text_input.jsonl").read_text().splitlines()[0])
    hf_row = {**row, "options": {o["letter"]: o["content"] for o in row["options"]}, "label": row["label"][0]}
    datasets.Dataset.from_list([hf_row]).to_parquet(str(tmp_path / "mxq.parquet"))  # TsinghuaC3I/MedXpertQA
    a = read("medxpertqa", tmp_path / "mxq.parquet")[0].items[0]
    b = read("medxpertqa", MXQ / "medxpertqa_text_input.jsonl")[0].items[0]
    assert (a.options, a.answer, a.options_in_question) == (b.options, b.answer, True)


def test_hf_spec_config_and_split_and_offline_cache_miss(tmp_path, monkeypatch):
    assert parse_hf_spec("hf:qiaojin/PubMedQA:pqa_labeled") == ("qiaojin/PubMedQA", "pqa_labeled", None)
    assert parse_hf_spec("hf:qiaojin/PubMedQA:pqa_labeled:train") == ("qiaojin/PubMedQA", "pqa_labeled", "train")
    assert parse_hf_spec("hf:cais/mmlu:test") == ("cais/mmlu", None, "test")
    assert parse_hf_spec("hf:cais/mmlu:anatomy", split="dev") == ("cais/mmlu", "anatomy", "dev")
    with pytest.raises(BadInput, match="expected hf:NAME"):
        parse_hf_spec("hf:a:b:c:d")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(
        BadInput,
        match=r"'nobody/none' \(config 'x'\) is not in the local Hugging Face datasets "
        r"cache; nothing is downloaded",
    ):
        read("pubmedqa", Path("hf:nobody/none:x"))


def test_unknown_split_and_split_file_mismatch():
    with pytest.raises(BadInput, match="defines no split 'dev' .*it has: test"):
        read("pubmedqa", REL / "pubmedqa/data/ori_pqal.json", split="dev")
    with pytest.raises(BadInput, match=r"its own file \(\*test\*\)"):
        read("slake", REL / "vqa_rad/VQA_RAD Dataset Public.json", split="test")


# -- the "Done when" files through `medgemma eval` -------------------------------------------------------------------
DONE_WHEN = [  # task, data, extra args
    ("pubmedqa", REL / "pubmedqa/data/ori_pqal.json", ["--split", "test"]),
    ("medxpertqa", MXQ / "medxpertqa_text_input.jsonl", []),
    ("afrimedqa", REL / "afrimedqa/sample_10.csv", []),
    ("mmlu_med", REL / "mmlu/data/test", []),
    ("slake", REL / "slake/Slake1.0/test.json", []),
    ("vqa_rad", REL / "vqa_rad/copy/testset.json", []),
    ("cxr_classification", REL / "cxr14/Data_Entry_2017.csv", ["--images", str(REL / "cxr14/downloads")]),
    ("cxr_classification", REL / "chexpert/CheXpert-v1.0-small/train.csv", []),
    ("medmcqa", REL / "medmcqa/one_row.json", []),
]


@pytest.mark.slow
def test_every_release_file_runs_through_medgemma_eval(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from medgemma_toolkit.cli import main

    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))
    for k, (task, data, extra) in enumerate(DONE_WHEN):
        out = tmp_path / f"run{k}"
        capsys.readouterr()
        try:
            main(
                [
                    "eval",
                    "--model",
                    str(tiny_model_dir),
                    "--task",
                    task,
                    "--data",
                    str(data),
                    "--limit",
                    "2",
                    "--max-new-tokens",
                    "2",
                    "--bootstrap",
                    "50",
                    "--out",
                    str(out),
                    *extra,
                ]
            )
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        stdout, err = capsys.readouterr()
        assert code == 0, (task, data, err)
        s = json.loads((out / "summary.json").read_text())
        m = s["metrics"][s["task"]["primary_metric"]]
        assert s["counts"]["answered"] > 0 and m["n"] > 0 and m["value"] is not None, (task, data)
        assert m["ci_method"] in ("wilson", "bootstrap", "wilson-items") and m["ci_low"] < m["ci_high"], (task, m)
        if task == "afrimedqa":
            assert s["dataset"]["rows_skipped"]["several correct options (single-answer task)"] == 1
            assert "rows skipped: 1 several correct options" in stdout
            assert "Rows not scored: 1 several correct options" in (out / "report.md").read_text()
        if s.get("confusion"):
            c = s["confusion"]
            assert c["columns"] == c["labels"] + ["(unparseable)"] and all(
                len(r) == len(c["columns"]) for r in c["matrix"]
            )


def test_cli_errors_are_one_line_before_the_model_loads(tmp_path):
    from conftest import run_cli

    cases = [
        (
            ["--task", "pubmedqa", "--data", "hf:nobody/none:pqa_labeled"],
            "is not in the local Hugging Face datasets cache",
        ),
        (["--task", "pubmedqa", "--data", str(REL / "pubmedqa/data/test_ground_truth.json")], "pass it as --ids"),
        (
            ["--task", "pubmedqa", "--data", str(REL / "pubmedqa/data/ori_pqal.json"), "--ids", str(tmp_path / "no")],
            "ids file not found",
        ),
        (["--task", "medmcqa", "--data", str(REL / "medmcqa/test.json")], "2 skipped: unlabelled"),
    ]
    for args, msg in cases:  # --model points nowhere: these must fail on the data, before any model is loaded
        r = run_cli(
            "eval",
            "--model",
            str(tmp_path / "no-model"),
            *args,
            "--out",
            str(tmp_path / "o"),
            env={"HF_DATASETS_CACHE": str(tmp_path / "hf")},
        )
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and msg in lines[0], r.stderr


@pytest.mark.slow
def test_scripted_answer_scores_release_rows_exactly(tiny_model_dir, tmp_path, monkeypatch):
    """A checkpoint that always answers "Final Answer: J" on MedXpertQA's own rows (labels J, B, B): 1 of 3 right,
    landing in the J row and column of the confusion matrix, with the Wilson interval for 1/3."""
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.metrics import wilson_interval
    from medgemma_toolkit.eval.runner import EvalOptions, run_eval
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))
    mg = MedGemma.load(str(build_scripted_checkpoint(tiny_model_dir, tmp_path / "m", "Final Answer: J")))
    s = run_eval(
        mg,
        EvalOptions(
            task="medxpertqa",
            data=str(MXQ / "medxpertqa_text_input.jsonl"),
            out=tmp_path / "run",
            max_new_tokens=8,
            progress=False,
            n_boot=100,
        ),
    )
    acc = s["metrics"]["accuracy"]
    assert acc["value"] == pytest.approx(1 / 3) and acc["ci_method"] == "wilson"
    assert (acc["ci_low"], acc["ci_high"]) == pytest.approx(wilson_interval(1, 3))
    c = s["confusion"]
    assert c["labels"] == ["B", "J"] and c["columns"] == ["B", "J", "(unparseable)"]
    assert c["matrix"] == [[0, 2, 0], [0, 1, 0]]
