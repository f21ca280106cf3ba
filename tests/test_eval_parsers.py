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
