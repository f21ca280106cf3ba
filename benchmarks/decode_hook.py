"""Host time per decoding step spent by the transformers backend's per-step hook, before and after incremental
detokenisation, side by side in one run (no model: the hook's input is a token tensor, as `generate` passes it).

Before (the hook up to commit 6ca55e4): copy every row's whole generated sequence to Python (`.tolist()`) and
re-decode all of it at every step. After: copy only the newest token per row (`TokenStepper` +
`IncrementalDetokenizer`), decode a few tokens, or nothing at all when no text is streamed and no stop string set.
On a GPU a MedGemma-4B decode step takes ~10-20 ms at batch 32; host work of that order leaves the GPU idle.

    python benchmarks/decode_hook.py                    # batch 32 x 512 new tokens, the tiny test tokenizer
    python benchmarks/decode_hook.py --batch 8 --tokens 256 --tokenizer /path/to/checkpoint
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def old_hook(rows, tracker, decode, stop_ids, byte_ids, prompt_len):
    """The per-step hook as it was before incremental detokenisation (kept here as the baseline)."""

    def update(row, seq):
        cut = next((k for k, t in enumerate(seq) if t in stop_ids), None)
        ids = seq if cut is None else seq[:cut]
        k = len(ids)
        while k > 0 and ids[k - 1] in byte_ids:
            k -= 1
        text = decode(ids)
        stable = len(decode(ids[:k])) if k < len(ids) else None
        tracker.update(row, text, len(ids), cut is not None, stable)

    def hook(input_ids):
        for row, seq in zip(rows, input_ids[:, prompt_len:].tolist()):
            if row.finish is None:
                update(row, seq)
        return [r.finish is not None for r in rows]

    return hook


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokenizer", default=None, help="a checkpoint folder whose tokenizer to use (default: tiny)")
    args = ap.parse_args()

    import torch

    from medgemma_toolkit.backends.base import GenerationRequest, SamplingParams
    from medgemma_toolkit.backends.decoding import RowState, RowTracker, TokenStepper
    from medgemma_toolkit.core.messages import Prompt

    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        from medgemma_toolkit.testing.tiny_checkpoint import build_tokenizer

        tok = build_tokenizer(4000)
    vocab = tok.get_vocab()
    byte_ids = frozenset(i for t, i in vocab.items() if len(t) == 6 and t.startswith("<0x") and t.endswith(">"))
    special = set(tok.all_special_ids)
    # Realistic text: tokenise English prose, repeated to length (random ids would be mostly byte runs).
    prose = (
        "The cardiac silhouette is mildly enlarged. There is a small left pleural effusion with adjacent "
        "atelectasis. No pneumothorax. The osseous structures are intact. Impression: cardiomegaly. "
    ) * 40
    words = [t for t in tok(prose, add_special_tokens=False)["input_ids"] if t not in special]
    g = torch.Generator().manual_seed(0)
    seqs = torch.stack(
        [
            torch.roll(torch.tensor(words[: args.tokens + 64]), int(s))[: args.tokens]
            for s in torch.randint(0, 64, (args.batch,), generator=g)
        ]
    )
    ids = torch.cat([torch.zeros(args.batch, args.prompt, dtype=torch.long), seqs], dim=1)
    stop_ids: set[int] = set()

    def decode(x):
        return tok.decode(x, skip_special_tokens=False)

    def rows_for(stream: bool, stop: tuple[str, ...]):
        params = SamplingParams(max_new_tokens=args.tokens + 1, stop=stop)
        rows = [RowState(i, GenerationRequest(Prompt(text="x"), params)) for i in range(args.batch)]
        return rows, ((lambda i, d: None) if stream else None)

    def run(kind: str, stream: bool, stop: tuple[str, ...]) -> float:
        rows, on_delta = rows_for(stream, stop)
        if kind == "before":
            hook = old_hook(rows, RowTracker(rows, on_delta), decode, stop_ids, byte_ids, args.prompt)
            call = hook
        else:
            stepper = TokenStepper(rows, on_delta, decode, stop_ids, byte_ids)

            def call(x):
                return stepper.advance(x[:, -1].tolist())

        t0 = time.perf_counter()
        for step in range(1, args.tokens + 1):
            call(ids[:, : args.prompt + step])
        return (time.perf_counter() - t0) / args.tokens * 1000

    print(
        f"per-step host time of the decode hook, batch {args.batch} x {args.tokens} new tokens "
        f"({'tokenizer ' + args.tokenizer if args.tokenizer else 'tiny test tokenizer, vocab 4000'})"
    )
    print(f"{'case':34} {'before ms':>10} {'after ms':>10} {'ratio':>7}")
    for label, stream, stop in [
        ("streaming (server, chat)", True, ()),
        ("stop string, not streamed", False, ("Final Answer:",)),
        ("no stream, no stop (eval, batch)", False, ()),
    ]:
        before, after = run("before", stream, stop), run("after", stream, stop)
        print(f"{label:34} {before:10.2f} {after:10.2f} {before / after:6.1f}x")


if __name__ == "__main__":
    main()
