"""Benchmark `medgemma serve`: (a) p50 latency through HTTP vs a direct call of the same backend, (b) throughput
with 8 concurrent clients vs 1 (what dynamic batching buys). Prints both ratios side by side.

    python benchmarks/serve_latency.py                      # a small random MedGemma-architecture checkpoint
    python benchmarks/serve_latency.py --model medgemma-4b-it --max-tokens 64 --samples 20
    python benchmarks/serve_latency.py --model demo --backend llamacpp     # continuous batching through llama.cpp
    python benchmarks/serve_latency.py --model demo --anchor llama-server /tmp/llama-server-build/build/bin/llama-server

`--anchor llama-server BIN` also starts llama.cpp's own server (build it once: scripts/build_llama_server.sh) on the
same GGUF with `-np CLIENTS`, beside ours with `--parallel CLIENTS`, and sends both the same completion requests
from the same clients (1, then CLIENTS at once, alternating servers each round); it prints both throughputs and our
ratio to llama-server's: the bar for llama.cpp batching (issue 35).

Direct and HTTP requests are interleaved (direct, HTTP, direct, ...) so background load hits both alike. The server
runs as a child process (the real `medgemma serve` command) with the same model, preset and prompt; it holds its
own copy of the weights, so a real model needs memory for two.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    "Is the heart enlarged on this chest radiograph?",
    "Is there a pleural effusion on this chest radiograph?",
    "Are the lungs clear on this chest radiograph?",
    "Is there pulmonary edema on this chest radiograph?",
    "Is there consolidation on this chest radiograph?",
    "Is there atelectasis on this chest radiograph?",
    "Is the mediastinum widened on this chest radiograph?",
    "Is there a pneumothorax on this chest radiograph?",
]


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def completion_rounds(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> tuple[float, int]:
    """(seconds, completion tokens) for `clients` clients each sending `per_client` greedy `/v1/completions`
    requests: the same raw prompts on every server, so both tokenize and decode the same work."""
    import httpx

    def client(k: int) -> int:
        n = 0
        with httpx.Client() as c:
            for i in range(per_client):
                q = QUESTIONS[(k + i) % len(QUESTIONS)]
                body = {"model": model, "prompt": f"Question: {q}\nAnswer:", "max_tokens": max_tokens, "temperature": 0}
                r = c.post(url + "/v1/completions", json=body, timeout=600)
                r.raise_for_status()
                n += int(r.json()["usage"]["completion_tokens"])
        return n

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        toks = sum(pool.map(client, range(clients)))
    return time.perf_counter() - t0, toks


class LlamaServer:
    """llama.cpp's own `llama-server` on a GGUF, on a free loopback port, stopped on exit."""

    def __init__(self, binary: str, gguf: str, mmproj: str | None, slots: int, threads: int, log: Path) -> None:
        from medgemma_toolkit.serve.launch import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A pool of 2048 cells per slot, unified like ours (`--parallel N`: N x 2048, one shared pool).
        self.cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(self.port), "-np", str(slots)]
        self.cmd += ["-c", str(2048 * slots), "-kvu", "-t", str(threads), "-tb", str(threads), "--no-webui"]
        self.cmd += ["--mmproj", mmproj] if mmproj else []
        self.log = log

    def __enter__(self) -> LlamaServer:
        import httpx

        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: {self.log.read_text()[-1500:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("llama-server did not become healthy within 180 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def anchor(args: argparse.Namespace, ours_url: str, gguf: str, mmproj: str | None, tmp: Path) -> dict:
    """Our server against llama-server on the same GGUF: req/s and tok/s at 1 and N clients, and our ratio."""
    from medgemma_toolkit.backends.llamacpp_backend import physical_cores

    binary = args.anchor[1] if len(args.anchor) > 1 else "llama-server"
    n = args.clients
    tally = {(who, k): [0.0, 0] for who in ("ours", "llama-server") for k in (1, n)}
    with LlamaServer(binary, gguf, mmproj, n, physical_cores(), tmp / "llama-server.log") as theirs:
        urls = {"ours": (ours_url, "bench"), "llama-server": (theirs.url, "anchor")}
        for url, name in urls.values():  # warm-up
            completion_rounds(url, name, 1, 1, args.max_tokens)
        for r in range(args.rounds):
            order = list(urls) if r % 2 == 0 else list(urls)[::-1]  # alternate who goes first
            for k in (1, n):
                for who in order:
                    url, name = urls[who]
                    secs, toks = completion_rounds(url, name, k, (n * args.per_client) // k, args.max_tokens)
                    tally[who, k][0] += secs
                    tally[who, k][1] += toks
    total = args.rounds * n * args.per_client
    out: dict = {"anchor_binary": binary, "anchor_slots": n}
    for (who, k), (secs, toks) in tally.items():
        out[f"{who}_{k}_clients_rps"] = round(total / secs, 3)
        out[f"{who}_{k}_clients_tok_s"] = round(toks / secs, 1)
    for k in (1, n):
        out[f"ratio_{k}_clients"] = round(out[f"ours_{k}_clients_rps"] / out[f"llama-server_{k}_clients_rps"], 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model to serve (default: build a small random checkpoint)")
    ap.add_argument("--hidden-size", type=int, default=128, help="size of the built checkpoint")
    ap.add_argument("--layers", type=int, default=4, help="layers of the built checkpoint")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--samples", type=int, default=15, help="latency samples per side")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=4, help="requests per client per throughput round")
    ap.add_argument("--rounds", type=int, default=2, help="throughput rounds (1 client, then N clients, each)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads on both sides (1: robust on a shared machine, where multi-threaded "
        "ops stall waiting for descheduled threads); 0 = torch's default",
    )
    ap.add_argument("--backend", default="auto", help="backend on both sides (e.g. llamacpp for a GGUF or the demo)")
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    ap.add_argument(
        "--anchor",
        nargs="+",
        metavar="ARG",
        help="'llama-server [BIN]': also run llama.cpp's own server on the same GGUF and print our ratio to it",
    )
    args = ap.parse_args(argv)
    if args.anchor and (args.anchor[0] != "llama-server" or len(args.anchor) > 2):
        ap.error("--anchor takes 'llama-server' and optionally the binary's path")
    if args.anchor:
        args.backend = "llamacpp"  # the same GGUF on both sides

    import httpx
    import torch

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.serve.launch import ServerProcess

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model = args.model
    if model is None:
        from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

        model = str(build_tiny_medgemma(tmp / "bench-medgemma", hidden_size=args.hidden_size, layers=args.layers))
    env = {}
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    mg = MedGemma.load(
        model, backend=args.backend, max_batch_size=args.clients, **({"parallel": args.clients} if args.anchor else {})
    )
    question = QUESTIONS[0]

    def direct_once(q: str = question) -> tuple[float, int]:
        req = mg.request(q, max_new_tokens=args.max_tokens)
        t0 = time.perf_counter()
        c = mg.backend.generate([req])[0]
        return time.perf_counter() - t0, c.completion_tokens

    with ServerProcess(
        model,
        tmp / "server.log",
        "--served-model-name",
        "bench",
        "--max-batch-size",
        str(args.clients),
        "--max-queue",
        str(args.clients * 2),
        "--backend",
        args.backend,
        *(["--parallel", str(args.clients)] if args.anchor else []),
        env=env,
    ) as srv:
        url = srv.url + "/v1/chat/completions"

        def body(q: str) -> dict:
            return {"model": "bench", "max_tokens": args.max_tokens, "messages": [{"role": "user", "content": q}]}

        def http_once(client: httpx.Client, q: str = question) -> tuple[float, int]:
            t0 = time.perf_counter()
            r = client.post(url, json=body(q), timeout=600)
            dt = time.perf_counter() - t0
            r.raise_for_status()
            return dt, r.json()["usage"]["completion_tokens"]

        with httpx.Client() as client:
            for _ in range(2):  # warm-up both paths
                direct_once()
                http_once(client)
            direct, http, toks = [], [], set()
            for _ in range(args.samples):
                d, nd = direct_once()
                h, nh = http_once(client)
                direct.append(d)
                http.append(h)
                toks.update((nd, nh))
        # The same model ran at both ends: the server must have generated exactly as many tokens.
        assert len(toks) == 1, f"token counts differ between direct and HTTP: {toks}"

        def _run_n(k: int, n: int) -> int:
            n_tok = 0
            with httpx.Client() as c:
                for i in range(n):
                    _, t = http_once(c, QUESTIONS[(k + i) % len(QUESTIONS)])
                    n_tok += t
            return n_tok

        def batches() -> tuple[float, float]:
            text = httpx.get(srv.url + "/metrics", timeout=10).text
            vals = dict(
                ln.split()[:2]
                for ln in text.splitlines()
                if ln.startswith("medgemma_batch_size_s") or ln.startswith("medgemma_batch_size_c")
            )
            return float(vals["medgemma_batch_size_sum"]), float(vals["medgemma_batch_size_count"])

        def timed(clients: int, per_client: int) -> tuple[float, int, float]:
            """(seconds, tokens, mean batch size) for `clients` clients each sending `per_client` requests."""
            s0, c0 = batches()
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                toks = sum(pool.map(lambda k: _run_n(k, per_client), range(clients)))
            secs = time.perf_counter() - t0
            s1, c1 = batches()
            return secs, toks, (s1 - s0) / max(1.0, c1 - c0)

        # Rounds alternate 1 client and N clients over the same number of requests, so that load changes on a
        # shared machine hit both sides alike.
        one_s = many_s = 0.0
        one_tok = many_tok = 0
        many_batch = []
        for _ in range(args.rounds):
            s1, t1, _b = timed(1, args.clients * args.per_client)
            sn, tn, bn = timed(args.clients, args.per_client)
            one_s, one_tok, many_s, many_tok = one_s + s1, one_tok + t1, many_s + sn, many_tok + tn
            many_batch.append(bn)
        total = args.rounds * args.clients * args.per_client
        one_rps, many_rps = total / one_s, total / many_s
        one_tps, many_tps = one_tok / one_s, many_tok / many_s
        mean_batch = statistics.mean(many_batch)
        anchored = {}
        if args.anchor:
            be = mg.backend
            anchored = anchor(args, srv.url, str(be.path), str(be.mmproj_path) if be.mmproj_path else None, tmp)

    res = {
        "model": args.model
        or f"random MedGemma-architecture checkpoint (hidden {args.hidden_size}, {args.layers} layers)",
        "max_tokens": args.max_tokens,
        "completion_tokens_per_request": toks.pop(),
        "samples": args.samples,
        "p50_direct_ms": round(p50(direct) * 1000, 2),
        "p50_http_ms": round(p50(http) * 1000, 2),
        "http_overhead_ratio": round(p50(http) / p50(direct) - 1.0, 4),
        # each HTTP sample against the direct sample taken just before it: cancels slow load drifts
        "http_overhead_paired_median": round(p50([h / d for h, d in zip(http, direct)]) - 1.0, 4),
        "throughput_1_client_rps": round(one_rps, 3),
        f"throughput_{args.clients}_clients_rps": round(many_rps, 3),
        "throughput_ratio": round(many_rps / one_rps, 2),
        "tokens_per_s_1_client": round(one_tps, 1),
        f"tokens_per_s_{args.clients}_clients": round(many_tps, 1),
        f"mean_batch_size_{args.clients}_clients": round(mean_batch, 2),
        "cpu_threads": torch.get_num_threads(),
        "backend": mg.backend.info.backend,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(
        f"model: {res['model']} ({res['backend']}); {res['completion_tokens_per_request']} tokens per request; "
        f"load average {res['load_average_1min']}"
    )
    print(
        f"(a) p50 latency  direct {res['p50_direct_ms']:.1f} ms  HTTP {res['p50_http_ms']:.1f} ms  "
        f"overhead {res['http_overhead_ratio'] * 100:+.2f}% (paired median "
        f"{res['http_overhead_paired_median'] * 100:+.2f}%)  (target <= +5%)"
    )
    print(
        f"(b) throughput   1 client {one_rps:.2f} req/s  {args.clients} clients {many_rps:.2f} req/s  "
        f"ratio {res['throughput_ratio']:.2f}x  (target >= 3x; mean batch {mean_batch:.2f} with {args.clients} clients)"
    )
    if anchored:
        res.update(anchored)
        n = args.clients
        for k in (1, n):
            print(
                f"(c) vs llama-server, {k} client{'s' if k > 1 else ''}: ours {res[f'ours_{k}_clients_rps']:.2f} req/s "
                f"({res[f'ours_{k}_clients_tok_s']:.1f} tok/s)  llama-server {res[f'llama-server_{k}_clients_rps']:.2f} "
                f"req/s ({res[f'llama-server_{k}_clients_tok_s']:.1f} tok/s)  ratio {res[f'ratio_{k}_clients']:.2f}x"
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
