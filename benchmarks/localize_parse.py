"""Cost of reading boxes from a model answer (localize.parse_boxes): the notebook's answer beside adversarial ones
(8,000 characters of open brackets, near-boxes, Python-style quotes), as a ratio to a typical answer, in one run.

    python benchmarks/localize_parse.py
"""

from __future__ import annotations

import time

from medgemma_toolkit.localize import parse_boxes

TYPICAL = 'The lung is on the left of the image.\nFinal Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "right lung"}]```'
CASES = {
    "typical answer": TYPICAL,
    "answer after 2 kB of reasoning": "Reasoning [a] (b).\n" * 110 + TYPICAL,
    "200 boxes, cut off": "Final Answer: [" + ", ".join(['{"box_2d": [1, 2, 3, 4], "label": "a"}'] * 200),
    "8 kB of '['": "[" * 8000,
    "8 kB of '[{'": "[{" * 4000,
    '8 kB of "[\'"': "['" * 4000,
    "8 kB of '[x] '": "[x] " * 2000,
    "8 kB closed nesting": "[" * 4000 + "]" * 4000,
}


def best_of(text: str, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        parse_boxes(text)
        times.append(time.perf_counter() - t)
    return min(times)


if __name__ == "__main__":
    base = best_of(CASES["typical answer"])
    for name, text in CASES.items():
        dt = best_of(text)
        print(f"{name:32s} {len(text):6d} chars  {dt * 1000:8.2f} ms  x{dt / base:8.1f} of a typical answer")
