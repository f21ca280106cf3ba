"""Answer parsers on crafted model outputs: the protocol phrases, with and without thinking, and the traps."""

from __future__ import annotations

import pytest

from medgemma_toolkit.eval.parsers import diagnosis_letter, final_answer_letter, free_text, yes_no
from medgemma_toolkit.prompts.thinking import split_thought

OPTS = {"A": "Pneumonia", "B": "Asthma", "C": "COPD", "D": "Pulmonary edema"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Final Answer: B", "B"),
        ("final answer: b", "B"),
        ("FINAL ANSWER: D", "D"),
        ("Final answer: (B)", "B"),
        ("Final Answer: [C]", "C"),
        ("Final Answer: C.", "C"),
        ("Final Answer: C. COPD is the most likely.", "C"),
        ("Final Answer: A) Pneumonia", "A"),
        ("**Final Answer:** D", "D"),
        ("**Final Answer: B**", "B"),
        ("The findings suggest airflow limitation.\n\nFinal Answer: C\n\nLet me know if you need more.", "C"),
        ("Final Answer:\n\nB", "B"),
        ("Final Answer - A", "A"),
        ("The final answer is: C", "C"),
        ("Final Answer: Asthma", "B"),
        ("Final Answer: pulmonary edema.", "D"),
        ("First I thought Final Answer: A, but on reflection\nFinal Answer: C", "C"),
        ("Final Answer: B or C", None),
        ("Final Answer: B, C", None),
        ("Final Answer: A and D", None),
        ("Final Answer: B/C", None),
        ("Final answer: a 60-year-old smoker would have COPD", None),
        ("Final Answer: E", None),  # not an option
        ("The answer is B.", None),  # the protocol phrase is required
        ("B", None),
        ("", None),
        ("Final Answer:", None),
        ("Final Answer: Bronchitis", None),
    ],
)
def test_final_answer_letter(text, expected):
    assert final_answer_letter(text, OPTS) == expected


OPTS_HF = {"A": "Pneumonia", "B": "Asthma", "C": "Heart failure", "D": "Pulmonary edema"}


# Protocol 2 (PARSER_VERSION): the forms models write that protocol 1 missed (issue #34), each a named case.
@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("Final Answer: $\\boxed{B}$", "B", id="boxed-in-dollars"),
        pytest.param("Final Answer: \\boxed{C}", "C", id="boxed"),
        pytest.param("The final answer is $\\boxed{D}$", "D", id="the-final-answer-is-boxed"),
        pytest.param("Final Answer: Option B", "B", id="option-x"),
        pytest.param("Final Answer: The answer is B", "B", id="the-answer-is-x"),
        pytest.param("Final Answer: Heart failure (C)", "C", id="option-text-then-letter"),
        pytest.param("Final Answer: $\\boxed{\\text{A}}$", "A", id="boxed-text"),
        pytest.param("Final Answer: \\(\\boxed{B}\\)", "B", id="boxed-in-inline-math"),
        pytest.param("**Final Answer:** The correct answer is (D).", "D", id="the-correct-answer-is-x"),
        pytest.param("Final Answer: option (a)", "A", id="option-lowercase-bracketed"),
        pytest.param("Final Answer: heart failure (c).", "C", id="option-text-then-letter-lowercase"),
        # The refusals of protocol 1 still refuse inside the new wrappers.
        pytest.param("Final Answer: $\\boxed{B or C}$", None, id="boxed-two-letters"),
        pytest.param("Final Answer: Option E", None, id="option-not-offered"),
        pytest.param("Final Answer: \\boxed{E}", None, id="boxed-not-offered"),
        pytest.param("Final Answer: The answer is B or C", None, id="the-answer-is-two-letters"),
        pytest.param("Final Answer: Pneumonia (C)", None, id="text-of-one-option-letter-of-another"),
        pytest.param("Final Answer: Pneumonia (A) or asthma (B)", None, id="two-bracketed-letters"),
        pytest.param("Final Answer: Heart failure (E)", None, id="trailing-letter-not-offered"),
        pytest.param(
            "<unused94>thought\nFinal Answer: $\\boxed{A}$<unused95>Final Answer: Option C",
            "C",
            id="boxed-letter-inside-the-thought-ignored",
        ),
        pytest.param("The answer is \\boxed{B}.", None, id="boxed-without-the-protocol-phrase"),
    ],
)
def test_protocol_2_forms(text, expected):
    assert final_answer_letter(split_thought(text).answer, OPTS_HF) == expected


def test_parser_protocol_version_is_recorded(tmp_path):
    from medgemma_toolkit.eval.parsers import PARSER_VERSION
    from medgemma_toolkit.eval.report import summarize
    from medgemma_toolkit.eval.spec import get_task

    assert PARSER_VERSION == "2"
    rec = {"key": "1", "item_id": "1", "gold": "B", "parsed": "B", "correct": True, "score": 1.0, "error": None}
    run_info = {"dataset": {"questions": 1, "warnings": []}, "model": {"demo": False}}
    s = summarize(get_task("medqa"), [rec], run_info, n_boot=10)
    assert s["task"]["parser_version"] == "2"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("<unused94>thought\nMaybe the Final Answer: A here.<unused95>Final Answer: C", "C"),
        ("<unused94>thought\nFinal Answer: A is tempting", None),  # cut off while thinking: no answer shown
        ("<unused94>thought\nReasoning.<unused95>\n\n**Final Answer:** (d)", "D"),
        ("Reasoning leaked<unused95>Final Answer: B", "B"),
    ],
)
def test_thinking_is_removed_before_parsing(raw, expected):
    assert final_answer_letter(split_thought(raw).answer, OPTS) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The most likely diagnosis is: B", "B"),
        ("the most likely diagnosis is (c)", "C"),
        ("Pigmented lesion with irregular borders. The most likely diagnosis is: B. Melanoma", "B"),
        ("Most likely diagnosis is: Pulmonary edema", "D"),
        ("The most likely diagnosis is: A or B", None),
        ("Final Answer: A", "A"),  # falls back to the general phrase
        ("It is probably melanoma.", None),
    ],
)
def test_diagnosis_letter(text, expected):
    assert diagnosis_letter(text, OPTS) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Final Answer: yes", "yes"),
        ("final answer: No.", "no"),
        ("**Final Answer:** Yes", "yes"),
        ("There is blunting of the angle.\nFinal Answer: yes", "yes"),
        ("Yes.", "yes"),
        ("No, the heart is normal.", "no"),
        ("Final Answer: maybe", None),
        ("I cannot tell.", None),
        ("The heart is not enlarged, so no.", None),
        ("", None),
    ],
)
def test_yes_no(text, expected):
    assert yes_no(text) == expected


def test_free_text():
    assert free_text("The effusion is on the right.\nFinal Answer: right side") == "right side"
    assert free_text("  two nodules ") == "two nodules"
    assert free_text("   ") is None
