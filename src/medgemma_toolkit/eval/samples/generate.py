"""Regenerate the shipped sample data (run: python -m medgemma_toolkit.eval.samples.generate).

Everything here is written by us: general-knowledge questions in each benchmark's file format, invented PubMedQA-style
abstracts, and synthetic "phantom" images drawn with PIL (a dark chest with a bright heart, optional effusion and
nodules; skin-lesion phantoms). Two DICOM files come from pydicom's own test data. No public benchmark item is used.
Labels and reference reports follow from the drawing parameters, so they are consistent with the pixels.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path
from typing import Any, cast

from PIL import Image, ImageDraw

HERE = Path(__file__).parent

QUESTIONS = [  # (question, [A, B, C, D], gold letter)
    ("Deficiency of which vitamin causes scurvy?", ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"], "C"),
    ("Which organ secretes insulin?", ["Liver", "Pancreas", "Spleen", "Kidney"], "B"),
    (
        "What is a normal resting heart rate for a healthy adult, in beats per minute?",
        ["20-40", "60-100", "120-160", "180-220"],
        "B",
    ),
    (
        "Which blood cells carry most of the oxygen in blood?",
        ["Red blood cells", "Platelets", "Neutrophils", "Lymphocytes"],
        "A",
    ),
    ("Which bone lies in the thigh?", ["Humerus", "Tibia", "Femur", "Radius"], "C"),
    (
        "Which bacterium most often causes community-acquired pneumonia in adults?",
        ["Streptococcus pneumoniae", "Escherichia coli", "Clostridioides difficile", "Treponema pallidum"],
        "A",
    ),
    (
        "Peaked T waves on an ECG suggest which electrolyte disturbance?",
        ["Hypokalemia", "Hyperkalemia", "Hyponatremia", "Hypercalcemia"],
        "B",
    ),
    ("Which hormone is lacking in type 1 diabetes?", ["Glucagon", "Cortisol", "Insulin", "Thyroxine"], "C"),
    (
        "What is the first-line treatment for anaphylaxis?",
        ["Intramuscular epinephrine", "Oral antihistamine", "Intravenous fluids alone", "Inhaled salbutamol"],
        "A",
    ),
    (
        "Which heart chamber pumps blood into the aorta?",
        ["Right atrium", "Right ventricle", "Left atrium", "Left ventricle"],
        "D",
    ),
    (
        "Which nerve is compressed in carpal tunnel syndrome?",
        ["Ulnar nerve", "Radial nerve", "Median nerve", "Axillary nerve"],
        "C",
    ),
    (
        "Which organism causes tuberculosis?",
        ["Mycobacterium tuberculosis", "Staphylococcus aureus", "Candida albicans", "Plasmodium falciparum"],
        "A",
    ),
]
EXTRA = ["Sodium chloride", "Dopamine", "Keratin", "Collagen", "Hemoglobin", "Surfactant"]  # MedXpertQA has 10 options
LETTERS = "ABCDEFGHIJ"

ABSTRACTS = [  # invented studies: (question, context, decision)
    (
        "Does supervised aerobic exercise lower systolic blood pressure in stage 1 hypertension?",
        "In a randomized trial of 200 adults, 12 weeks of supervised aerobic exercise lowered systolic pressure by 7 mmHg compared with usual care.",
        "yes",
    ),
    (
        "Does a daily vitamin C supplement prevent common colds in office workers?",
        "Among 400 office workers followed for one winter, cold incidence was 31% with vitamin C and 30% with placebo.",
        "no",
    ),
    (
        "Is early mobilisation after hip surgery associated with shorter hospital stay?",
        "In a cohort of 350 patients, those walking within 24 hours stayed a median of 5 days versus 8 days for the others; confounding by frailty could not be excluded.",
        "maybe",
    ),
    (
        "Does hand-hygiene training reduce ward infection rates?",
        "After a training programme on 10 wards, hospital-acquired infections fell from 6.1 to 3.9 per 1000 patient-days, while control wards were unchanged.",
        "yes",
    ),
    (
        "Does listening to music before surgery reduce postoperative pain scores?",
        "In 120 patients randomised to music or silence, pain scores at 24 hours did not differ (mean 3.2 versus 3.3).",
        "no",
    ),
    (
        "Is screen time associated with sleep duration in adolescents?",
        "A survey of 900 adolescents found shorter sleep with more screen time, but sleep was self-reported and the design cross-sectional.",
        "maybe",
    ),
    (
        "Does a nurse-led telephone follow-up reduce readmissions after heart failure?",
        "A trial of 500 patients found 30-day readmission of 14% with telephone follow-up and 22% with usual care.",
        "yes",
    ),
    (
        "Does chewing gum after bowel surgery shorten time to first bowel movement?",
        "In 80 patients, time to first bowel movement was 3.1 days with gum and 3.0 days without.",
        "no",
    ),
    (
        "Is a low-salt diet associated with fewer migraine days?",
        "In a small crossover study of 24 participants, migraine days fell slightly on the low-salt diet, with wide confidence intervals.",
        "maybe",
    ),
    (
        "Does a smartphone reminder improve adherence to inhaled corticosteroids?",
        "Among 300 adults with asthma, adherence measured by dose counters rose from 55% to 74% with reminders versus 56% in controls.",
        "yes",
    ),
    (
        "Does routine chest imaging before minor surgery change management?",
        "Of 1000 preoperative chest images in healthy adults, none led to a change in surgical or anaesthetic plan.",
        "no",
    ),
    (
        "Is coffee consumption associated with lower liver enzyme levels?",
        "In a population sample of 2000 adults, coffee drinkers had slightly lower enzyme levels, but alcohol intake was poorly measured.",
        "maybe",
    ),
]


def _phantom_cxr(path: Path, heart: float, effusion: str | None, nodules: int, seed: int) -> None:
    """A 96-px 'chest radiograph' phantom: dark lungs, bright heart of relative width `heart`."""
    rnd = random.Random(seed)
    im = Image.new("L", (96, 96), 200)
    d = ImageDraw.Draw(im)
    d.ellipse((10, 12, 46, 84), fill=40)
    d.ellipse((50, 12, 86, 84), fill=40)
    w = int(76 * heart / 2)
    d.ellipse((48 - w, 40, 48 + w, 80), fill=230)
    if effusion == "right":  # patient's right = image left
        d.rectangle((10, 70, 46, 84), fill=190)
    elif effusion == "left":
        d.rectangle((50, 70, 86, 84), fill=190)
    for _ in range(nodules):
        x, y = rnd.choice([(24, 28), (70, 26), (22, 50), (72, 52)])
        d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=250)
    im.convert("RGB").save(path)


def _lesion(path: Path, kind: str, seed: int) -> None:
    rnd = random.Random(seed)
    im = Image.new("RGB", (96, 96), (224, 180, 150))
    d = ImageDraw.Draw(im)
    if kind == "nevus":
        d.ellipse((33, 33, 63, 63), fill=(120, 80, 50))
    elif kind == "melanoma":
        pts = [
            (48 + rnd.randint(14, 30) * c, 48 + rnd.randint(14, 30) * s)
            for c, s in [(1, 0), (0.7, 0.7), (0, 1), (-0.7, 0.7), (-1, 0), (-0.7, -0.7), (0, -1), (0.7, -0.7)]
        ]
        d.polygon(pts, fill=(60, 30, 30))
        d.ellipse((44, 40, 56, 52), fill=(20, 20, 60))
    else:  # hemangioma
        d.ellipse((36, 36, 60, 60), fill=(200, 30, 50))
    im.save(path)


CHEST = [  # (heart width ratio, effusion side, nodules, atelectasis label, edema label)
    (0.42, None, 0, "0", "0"),
    (0.62, None, 0, "", "1"),
    (0.45, "right", 0, "1", ""),
    (0.65, "left", 1, "-1", "1"),
    (0.40, None, 1, "0", "0"),
    (0.60, "right", 0, "1", "0"),
    (0.44, "left", 2, "", "0"),
    (0.66, None, 0, "0", "1"),
    (0.43, None, 0, "0", ""),
    (0.61, "left", 0, "1", "1"),
    (0.46, "right", 1, "0", "0"),
    (0.64, None, 2, "-1", "0"),
]


def _report(heart: float, effusion: str | None, nodules: int) -> str:
    parts = ["The heart is enlarged." if heart > 0.55 else "The heart size is normal."]
    parts.append(f"There is a small {effusion} pleural effusion." if effusion else "There is no pleural effusion.")
    parts.append(
        {
            0: "No pulmonary nodule is seen.",
            1: "A single small pulmonary nodule is present.",
            2: "Two small pulmonary nodules are present.",
        }[nodules]
    )
    return " ".join(parts)


def write_text_tasks() -> None:
    with open(HERE / "medqa.jsonl", "w") as f:
        for q, opts, gold in QUESTIONS:
            f.write(
                json.dumps(
                    {
                        "question": q,
                        "answer": opts[LETTERS.index(gold)],
                        "options": dict(zip(LETTERS, opts)),
                        "meta_info": "sample",
                        "answer_idx": gold,
                    }
                )
                + "\n"
            )
    with open(HERE / "medmcqa.json", "w") as f:  # JSON lines, as in the MedMCQA release; cop is 1-based there
        for i, (q, opts, gold) in enumerate(QUESTIONS):
            f.write(
                json.dumps(
                    {
                        "id": f"mcqa-{i:03d}",
                        "question": q,
                        "opa": opts[0],
                        "opb": opts[1],
                        "opc": opts[2],
                        "opd": opts[3],
                        "cop": LETTERS.index(gold) + 1,
                        "choice_type": "single",
                        "subject_name": "Medicine",
                    }
                )
                + "\n"
            )
    (HERE / "pubmedqa.json").write_text(
        json.dumps(
            {
                str(90000 + i): {
                    "QUESTION": q,
                    "CONTEXTS": [c],
                    "LABELS": ["RESULTS"],
                    "final_decision": dec,
                    "LONG_ANSWER": c,
                }
                for i, (q, c, dec) in enumerate(ABSTRACTS)
            },
            indent=1,
        )
    )
    mm = HERE / "mmlu_med"
    mm.mkdir(exist_ok=True)
    for name, rows in (("anatomy_test.csv", QUESTIONS[:6]), ("clinical_knowledge_test.csv", QUESTIONS[6:])):
        with open(mm / name, "w", newline="") as f:
            w: Any = csv.writer(f)  # a csv.DictWriter further down
            for q, opts, gold in rows:
                w.writerow([q, *opts, gold])
    with open(mm / "astronomy_test.csv", "w", newline="") as f:  # not a medical subject: must be left out
        csv.writer(f).writerow(["Which planet is closest to the Sun?", "Venus", "Mercury", "Mars", "Earth", "B"])
    with open(HERE / "medxpertqa.jsonl", "w") as f:
        for i, (q, opts, gold) in enumerate(QUESTIONS):
            allopts = opts + EXTRA
            f.write(
                json.dumps(
                    {
                        "id": f"Text-{i}",
                        "question": q,
                        "options": dict(zip(LETTERS, allopts)),
                        "label": gold,
                        "medical_task": "Basic Science",
                        "question_type": "Understanding",
                    }
                )
                + "\n"
            )
    with open(HERE / "afrimedqa.csv", "w", newline="") as f:
        w = csv.DictWriter(
            f, ["sample_id", "question_type", "question", "answer_options", "correct_answer", "specialty"]
        )
        w.writeheader()
        for i, (q, opts, gold) in enumerate(QUESTIONS):
            five = opts + ["None of the above"]
            w.writerow(
                {
                    "sample_id": f"afm-{i:03d}",
                    "question_type": "mcq",
                    "question": q,
                    "answer_options": json.dumps({f"option{k + 1}": o for k, o in enumerate(five)}),
                    "correct_answer": f"option{LETTERS.index(gold) + 1}",
                    "specialty": "General",
                }
            )
        w.writerow(
            {
                "sample_id": "afm-saq-1",
                "question_type": "saq",
                "question": "Explain how insulin lowers blood glucose.",
                "answer_options": "",
                "correct_answer": "",
                "specialty": "Endocrinology",
            }
        )


def write_image_tasks() -> None:
    from pydicom.data import get_testdata_file

    cxr = HERE / "cxr"
    cxr.mkdir(exist_ok=True)
    for i, (heart, eff, nod, _, _) in enumerate(CHEST):
        _phantom_cxr(cxr / f"phantom_{i:02d}.png", heart, eff, nod, seed=i)
    with open(cxr / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"])
        for i, (heart, eff, _nod, atel, edema) in enumerate(CHEST):
            w.writerow([f"phantom_{i:02d}.png", atel, int(heart > 0.55), "0", edema, int(eff is not None)])

    vqa = HERE / "vqa_rad"
    img_dir = vqa / "VQA_RAD Image Folder"
    img_dir.mkdir(parents=True, exist_ok=True)
    slake = HERE / "slake"
    (slake / "imgs").mkdir(parents=True, exist_ok=True)
    vqa_rows, slake_rows = [], []
    for i, (heart, eff, nod, _, _) in enumerate(CHEST):
        name = f"phantom_{i:02d}.png"
        shutil.copy(cxr / name, img_dir / name)
        (slake / "imgs" / f"xm{i:02d}").mkdir(exist_ok=True)
        shutil.copy(cxr / name, slake / "imgs" / f"xm{i:02d}" / "source.png")
        if i % 3 == 0:
            q, a, t = "Is there a pleural effusion?", "yes" if eff else "no", "CLOSED"
        elif i % 3 == 1:
            q, a, t = "Is the heart enlarged?", "yes" if heart > 0.55 else "no", "CLOSED"
        else:
            q, a, t = "How many nodules are visible?", ["none", "one", "two"][nod], "OPEN"
        vqa_rows.append(
            {
                "qid": 1000 + i,
                "image_name": name,
                "image_organ": "CHEST",
                "question": q,
                "answer": a,
                "answer_type": t,
                "question_type": "PRES",
                "phrase_type": "freeform",
            }
        )
        slake_rows.append(
            {
                "img_id": i,
                "img_name": f"xm{i:02d}/source.png",
                "question": q,
                "answer": a,
                "q_lang": "en",
                "answer_type": t,
                "qid": 2000 + i,
                "modality": "X-Ray",
            }
        )
        slake_rows.append(
            {
                "img_id": i,
                "img_name": f"xm{i:02d}/source.png",
                "question": "心脏增大了吗？",
                "answer": "是" if heart > 0.55 else "否",
                "q_lang": "zh",
                "answer_type": "CLOSED",
                "qid": 3000 + i,
                "modality": "X-Ray",
            }
        )
    (vqa / "vqa_rad.json").write_text(json.dumps(vqa_rows, indent=1))
    (slake / "test.json").write_text(json.dumps(slake_rows, indent=1, ensure_ascii=False))

    im = HERE / "image_mcq"
    im.mkdir(exist_ok=True)
    kinds = ["nevus", "melanoma", "hemangioma"]
    options = {"A": "Benign melanocytic nevus", "B": "Melanoma", "C": "Hemangioma", "D": "Seborrheic keratosis"}
    rows = []
    for i in range(10):
        kind = kinds[i % 3]
        _lesion(im / f"lesion_{i:02d}.png", kind, seed=i)
        rows.append(
            {
                "id": f"derm-{i:02d}",
                "question": "What is the most likely diagnosis of this skin lesion?",
                "options": options,
                "answer": "ABC"[i % 3],
                "image": f"lesion_{i:02d}.png",
            }
        )
    for name, gold in (("CT_small.dcm", "A"), ("MR_small.dcm", "B")):
        shutil.copy(cast(str, get_testdata_file(name)), im / name)
        rows.append(
            {
                "id": f"modality-{name[:2].lower()}",
                "question": "Which imaging modality produced this image?",
                "options": {"A": "CT", "B": "MRI", "C": "Ultrasound", "D": "Plain radiograph"},
                "answer": gold,
                "image": name,
            }
        )
    with open(im / "items.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

    rep = HERE / "report"
    rep.mkdir(exist_ok=True)
    with open(rep / "reports.jsonl", "w") as f:
        for i, (heart, eff, nod, _, _) in enumerate(CHEST):
            shutil.copy(cxr / f"phantom_{i:02d}.png", rep / f"phantom_{i:02d}.png")
            f.write(
                json.dumps(
                    {"id": f"study-{i:02d}", "image": f"phantom_{i:02d}.png", "report": _report(heart, eff, nod)}
                )
                + "\n"
            )


if __name__ == "__main__":
    write_text_tasks()
    write_image_tasks()
    print(f"wrote samples under {HERE}")
