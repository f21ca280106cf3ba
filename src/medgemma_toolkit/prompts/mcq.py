"""Multiple-choice prompt protocols as named data.

`toolkit` is our own prompt (question, options one per line as "(A) ...", a request to end with "Final Answer: X";
MedGemma's technical report scores MCQ by parsing that final line). `google-rl` is Google's only public MCQ prompt,
from its RL notebook (google-health/medgemma notebooks/reinforcement_learning_with_hugging_face.ipynb): the thinking
system instruction, a fixed instruction block with the question and the options written inline as "(A) ... (B) ...",
and a reward that takes the first match of an ordered list of "Final Answer" / "The final answer is" patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import lookup
from .thinking import THINK_INSTRUCTION

TOOLKIT_INSTRUCTION = (
    'Think step by step if needed, then finish with a line of the form "Final Answer: X" where X is the letter.'
)
# Google's RL notebook's template as its code builds it: a triple-quoted string inside a function, so every line
# after the first keeps the code's four-space indentation.
GOOGLE_RL_TEMPLATE = (
    "Answer the given question. Think step by step.\n"
    '    You can directly provide the answer (A single letter), without further additions. E.g. "Final Answer: (A)".\n'
    "    Question: [QUESTION]\n"
    "    [OPTIONS]\n"
    "    "
)
# The notebook's answer patterns, tried in this order; the first that matches anywhere in the text wins.
GOOGLE_RL_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"The final answer is\s\(([A-J])\)",
        r"The final answer is\s\**\(([A-J])\)\**",
        r"The final answer is\s\$\\boxed{([A-J])}\$",
        r"Final Answer:\(([A-J])\)",
        r"Final Answer:\s\(([A-J])\)",
        r"Final Answer:\s\(?([A-J])",
        r"Final Answer:\s*\**\(([A-J])\)\**",
        r"\**Final Answer:\**\s\(([A-J])\)",
    )
)


@dataclass(frozen=True)
class MCQProtocol:
    name: str
    version: str
    description: str
    system: str | None

    def user_text(self, question: str, options: list[tuple[str, str]]) -> str:
        if self.name == "google-rl":
            inline = " ".join(f"({k}) {v}" for k, v in options)
            return GOOGLE_RL_TEMPLATE.replace("[QUESTION]", question).replace("[OPTIONS]", inline)
        lines = "\n".join(f"({k}) {v}" for k, v in options)
        return f"{question}\n{lines}\n{TOOLKIT_INSTRUCTION}"

    def messages(self, question: str, options: list[tuple[str, str]]) -> list[dict[str, str]]:
        """Chat messages in Hugging Face's plain-string form."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.user_text(question, options)}]


MCQ_PROTOCOLS: dict[str, MCQProtocol] = {
    p.name: p
    for p in [
        MCQProtocol("toolkit", "1", "question, options one per line, 'Final Answer: X' on the last line", None),
        MCQProtocol(
            "google-rl",
            "1",
            "Google's RL notebook: thinking system instruction, inline '(A) ...' options, "
            "first matching 'Final Answer' pattern",
            THINK_INSTRUCTION,
        ),
    ]
}


def get_mcq_protocol(name: str) -> MCQProtocol:
    return lookup(MCQ_PROTOCOLS, name, "MCQ prompt")


def google_rl_answer(text: str) -> str | None:
    """The letter Google's RL notebook's reward extracts from a response (None when no pattern matches)."""
    if not isinstance(text, str) or not text:
        return None
    for pattern in GOOGLE_RL_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None
