"""Cost of reading a model answer as tool calls (prompts/tools.parse): typical answers beside adversarial ones
(8,000 characters of brackets or near-calls), as a ratio to a typical call, measured in one run.

    python benchmarks/tool_parse.py
"""

from __future__ import annotations

import time

from medgemma_toolkit.prompts import tools as fc

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CASES = {
    "typical call": '[get_weather(city="Paris")]',
    "call after 2 kB of text": "Some text.\n" * 200 + '[get_weather(city="Paris")]',
    "4 kB prose with parentheses": "The patient (seen twice) had mild findings (see above). " * 70,
    "8 kB of near-calls": "\n".join(["get_weather(city=) ) ) ) )"] * 300),
    "8 kB of '['": "[" * 8000,
    "8 kB of '{['": "{[" * 4000,
    "24 kB of nested calls": "get_weather(" * 2000,
}


def best_of(text: str, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fc.parse(text, TOOLS)
        times.append(time.perf_counter() - t)
    return min(times)


if __name__ == "__main__":
    base = best_of(CASES["typical call"])
    for name, text in CASES.items():
        dt = best_of(text)
        print(f"{name:32s} {len(text):6d} chars  {dt * 1000:8.2f} ms  x{dt / base:8.1f} of a typical call")
