"""Benchmark `medgemma serve` under hostile input: for each attack, the server's peak-memory growth (VmHWM, reset
before the attack) and `/health` latency while it runs, beside the idle `/health` latency measured in the same run.

    python benchmarks/hostile.py                 # a tiny random MedGemma-architecture checkpoint, every attack
    python benchmarks/hostile.py --only deflate_bomb,slow_bodies --json out.json
    python benchmarks/hostile.py --scale small --server-src /tmp/before/src   # issue 24's rows, safe sizes, against
                                                                             # an older checkout's server

Issue 24's rows (`zip_series` ... `context_chars`) run against the same default-settings server, which also loads a
tiny MedSigLIP and allow-lists a loopback "PACS" that answers every DICOMweb request with a chunked reply of zero
padding and no Content-Length. `--scale full` is the issue's sizes (8 x 8000^2 RLE slices, "{}" x 50,000, 16
4000^2 PNGs, 700 MB padding); `--scale small` shrinks the bombs so an unfixed server survives them.

All traffic goes to a child `medgemma serve` on 127.0.0.1, bounded in count and time; the script stops by itself.
For the bombs it also measures, in a fresh child process, what the raw library (pydicom / openjpeg) would spend on
the same bytes without the toolkit's bounds (skip with --no-raw; it needs ~2 GB). The codestream lie is a genuine
10000x10000 JPEG 2000 stream of zeros inside a DICOM whose header says 64x64.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MiB = 1024**2


def peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class HealthProbe:
    """Polls /health every 50 ms on its own connection while an attack runs; records each latency."""

    def __init__(self, url: str) -> None:
        self.url, self.lat, self._stop = url, [], threading.Event()

    def __enter__(self) -> HealthProbe:
        import httpx

        def run() -> None:
            with httpx.Client(timeout=30) as c:
                while not self._stop.is_set():
                    t = time.perf_counter()
                    try:
                        c.get(self.url + "/health")
                        self.lat.append(time.perf_counter() - t)
                    except Exception:
                        self.lat.append(30.0)
                    self._stop.wait(0.05)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(timeout=35)
        if not self.lat:  # the attack ended before the first probe: take one sample after it
            import httpx

            t = time.perf_counter()
            httpx.get(self.url + "/health", timeout=30)
            self.lat.append(time.perf_counter() - t)


def dicom_uri(data: bytes) -> str:
    return "data:application/dicom;base64," + base64.b64encode(data).decode()


def chat_body(model: str, content, max_tokens: int = 2) -> dict:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}


def attacks(url: str, model: str, args) -> dict[str, Callable[[], list]]:
    """name -> a function that runs the attack and returns the HTTP statuses it got."""
    import httpx

    from medgemma_toolkit.testing.hostile import deflate_bomb, j2k_dicom

    def post(path: str, body: dict | bytes, **kw):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(
            url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=300, **kw
        ).status_code

    # Every payload is built and serialised before its attack starts, so the probe times the server, not us.
    bomb = json.dumps(
        chat_body(model, [{"type": "image_url", "image_url": {"url": dicom_uri(deflate_bomb(512))}}])
    ).encode()
    lie = json.dumps(
        chat_body(model, [{"type": "image_url", "image_url": {"url": dicom_uri(j2k_dicom(64, 64, frame=lie_frame()))}}])
    ).encode()
    parts = json.dumps(chat_body(model, [{"type": "text", "text": ""}] * args.parts)).encode()

    def deflate() -> list:
        return [post("/v1/chat/completions", bomb)]

    def codestream_lie() -> list:
        return [post("/v1/chat/completions", lie)]

    big = dicom_uri(j2k_dicom(args.big_side, args.big_side))

    many = json.dumps(chat_body(model, [{"type": "image_url", "image_url": {"url": big}}] * 16)).encode()
    one = json.dumps({"image_url": {"url": big}}).encode()

    def many_j2k() -> list:
        return [post("/v1/chat/completions", many)]

    def previews() -> list:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            return list(pool.map(lambda _: post("/v1/medgemma/preview", one), range(6)))

    def slow_bodies() -> list:
        socks = []
        port = int(url.rsplit(":", 1)[1])
        for _ in range(80):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{"
            )
            socks.append(s)
        try:
            statuses = []
            end = time.monotonic() + args.slow_seconds
            while time.monotonic() < end:  # one byte a second on each, while normal requests come in
                for s in socks:
                    try:
                        s.sendall(b" ")
                    except OSError:
                        pass
                statuses.append(post("/v1/chat/completions", chat_body(model, "hi")))
                time.sleep(1.0)
            return statuses
        finally:
            for s in socks:
                s.close()

    def tiny_parts() -> list:
        return [post("/v1/chat/completions", parts)]

    def poisoned_batch() -> list:
        long_text = " ".join(f"finding{i % 97} lobe{i % 13}" for i in range(6000))
        qs = [long_text] + [f"Question {i}?" for i in range(5)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            return list(pool.map(lambda q: post("/v1/chat/completions", chat_body(model, q, 3)), qs))

    return {
        "deflate_bomb": deflate,
        "codestream_lie": codestream_lie,
        "many_j2k": many_j2k,
        "concurrent_previews": previews,
        "slow_bodies": slow_bodies,
        "tiny_parts": tiny_parts,
        "poisoned_batch": poisoned_batch,
        **gate_attacks(url, model, args, post),
    }


SCALES = {  # issue 24's attacks: (zip slices, zip side, "{}" repeats, embed side, PACS padding MiB)
    "full": (8, 8000, 50_000, 4000, 700),
    "small": (8, 2000, 5_000, 1500, 64),
}


def png_uri(side: int) -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gate_attacks(url: str, model: str, args, post) -> dict[str, Callable[[], list]]:
    """Issue 24: the routes added after issue 18 (ZIP series, zero-shot, embeddings, localize, model-input),
    DICOMweb without a Content-Length, deep JSON, and prompts far over the context."""
    from medgemma_toolkit.testing.hostile import rle_series_zip

    slices, side, reps, embed_side, _pad = SCALES[args.scale]
    zipped = json.dumps(
        {
            "image_url": {
                "url": "data:application/zip;base64," + base64.b64encode(rle_series_zip(slices, side, side)).decode()
            }
        }
    )
    template = json.dumps({"images": [png_uri(8)], "labels": ["a" * 100, "b" * 100], "template": "{}" * reps})
    pngs = json.dumps(
        {"model": "tiny-siglip", "input": [{"type": "image_url", "image_url": {"url": png_uri(embed_side)}}] * 16}
    )
    deep = json.dumps(
        chat_body(model, "hi")
        | {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[" * 200_000}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "ok"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    )
    huge = json.dumps(chat_body(model, "lung " * 2_000_000))
    pacs = f"dicomweb+http://127.0.0.1:{args.pacs_port}/dicom-web/studies/1.2/series/3.4/instances/5.6"
    dicomweb = json.dumps(chat_body(model, [{"type": "image_url", "image_url": {"url": pacs}}]))
    plain = json.dumps({"model": model, "image": png_uri(64), "objects": ["heart"] * 16}).encode()

    def text_plain() -> list:
        return [httpx_post(url + p, plain, "text/plain") for p in ("/v1/medgemma/localize", "/v1/medgemma/model-input")]

    def embedding_readers() -> list:
        port = int(url.rsplit(":", 1)[1])
        socks = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 33000000\r\n\r\n" + b" " * 1024 * 64
            )
            socks.append(s)
        try:
            time.sleep(1.0)
            return [post("/v1/embeddings", {"model": "tiny-siglip", "input": "edema"})]
        finally:
            for s in socks:
                s.close()

    return {
        "zip_series": lambda: [post("/v1/medgemma/model-input", zipped.encode())],
        "zero_shot_template": lambda: [post("/v1/medgemma/zero-shot", template.encode())],
        "embedding_images": lambda: [post("/v1/embeddings", pngs.encode())],
        "embedding_readers": embedding_readers,
        "text_plain_posts": text_plain,
        "dicomweb_chunked": lambda: [post("/v1/chat/completions", dicomweb.encode())],
        "deep_tool_arguments": lambda: [post("/v1/chat/completions", deep.encode())],
        "context_chars": lambda: [post("/v1/chat/completions", huge.encode())],
    }


def httpx_post(url: str, body: bytes, ctype: str) -> int:
    import httpx

    return httpx.post(url, content=body, headers={"Content-Type": ctype}, timeout=120).status_code


def start_pacs(padding_mib: int) -> int:
    """A loopback DICOMweb double: every GET gets a chunked reply of `padding_mib` MiB of zeros, no length."""
    import http.server

    class Padding(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=x')
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = bytes(64 * 1024)
            try:
                for _ in range(padding_mib * 16):
                    self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass

        def log_message(self, *a):
            pass

    from medgemma_toolkit.serve.launch import free_port

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Padding)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


# Each raw run resets its own peak (VmHWM) after building its input, then reports peak minus the RSS at that point.
_MEASURE = (
    "from pathlib import Path\n"
    "def rss(k):\n"
    "    return next(int(l.split()[1]) * 1024 for l in Path('/proc/self/status').read_text().splitlines()\n"
    "                if l.startswith(k))\n"
    "Path('/proc/self/clear_refs').write_text('5'); r0 = rss('VmRSS:')\n"
    "try: ATTACK\n"
    "except Exception: pass\n"
    "print(rss('VmHWM:') - r0)\n"
)
RAW = {
    "deflate_bomb": "import io, pydicom; from medgemma_toolkit.testing.hostile import deflate_bomb; d = deflate_bomb(512)\n"
    + _MEASURE.replace("ATTACK", "pydicom.dcmread(io.BytesIO(d))"),
    "codestream_lie": "import sys, openjpeg; d = open(sys.argv[1], 'rb').read()\n"
    + _MEASURE.replace("ATTACK", "openjpeg.decode(d)"),
}


def lie_frame() -> bytes:
    """A genuine JPEG 2000 stream of a 10000x10000 black image (a few hundred bytes), cached for the raw run."""
    global _LIE
    if _LIE is None:
        from medgemma_toolkit.testing.hostile import j2k_frame

        _LIE = j2k_frame(LIE_SIDE, LIE_SIDE)
    return _LIE


LIE_SIDE = 10_000
_LIE: bytes | None = None


def raw_growth(name: str, tmp: str) -> int | None:
    code = RAW.get(name)
    if code is None:
        return None
    frame = Path(tmp) / "lie.j2k"
    frame.write_bytes(lie_frame())
    out = subprocess.run([sys.executable, "-c", code, str(frame)], capture_output=True, text=True, timeout=300)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model to serve (default: build a tiny random checkpoint)")
    ap.add_argument("--only", help="comma-separated attack names")
    ap.add_argument("--big-side", type=int, default=4000, help="side of the JPEG 2000 zeros images")
    ap.add_argument("--parts", type=int, default=1_100_000, help="empty text parts in one body")
    ap.add_argument("--slow-seconds", type=float, default=8.0, help="how long the slow senders trickle")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw-library comparison")
    ap.add_argument("--scale", choices=list(SCALES), default="full", help="size of issue 24's attacks")
    ap.add_argument("--server-src", help="PYTHONPATH for the server (e.g. an older checkout's src, for 'before')")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    args.pacs_port = start_pacs(SCALES[args.scale][4])

    import httpx

    from medgemma_toolkit.serve.launch import ServerProcess

    with tempfile.TemporaryDirectory(prefix="hostile-bench") as tmp:
        model = args.model
        if model is None:
            from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

            model = str(build_tiny_medgemma(Path(tmp) / "tiny-medgemma"))
        log = Path(tmp) / "server.log"
        from medgemma_toolkit.testing.tiny_siglip import build_tiny_siglip

        siglip = str(build_tiny_siglip(Path(tmp) / "tiny-siglip"))
        env = {"OMP_NUM_THREADS": "1"} | ({"PYTHONPATH": args.server_src} if args.server_src else {})
        with ServerProcess(
            model,
            log,
            "--served-model-name",
            "bench",
            "--body-timeout",
            "30",
            "--embed-model",
            siglip,
            "--allow-image-host",
            f"127.0.0.1:{args.pacs_port}",
            env=env,
        ) as srv:
            with HealthProbe(srv.url) as idle:
                time.sleep(2.0)
            idle_p50 = statistics.median(idle.lat)
            table = attacks(srv.url, "bench", args)
            # Warm-up: the first DICOM a server sees pays for importing pydicom and its decoders (~0.5 s).
            from medgemma_toolkit.testing.hostile import j2k_dicom

            warm = chat_body("bench", [{"type": "image_url", "image_url": {"url": dicom_uri(j2k_dicom(64, 64))}}])
            assert httpx.post(srv.url + "/v1/chat/completions", json=warm, timeout=120).status_code == 200
            names = args.only.split(",") if args.only else list(table)
            results = {"idle_health_p50_ms": idle_p50 * 1000, "attacks": {}}
            print(f"idle /health p50 {idle_p50 * 1000:.1f} ms")
            print(
                f"{'attack':<22}{'statuses':<28}{'peak +MiB':>10}{'raw +MiB':>10}{'health p50':>12}"
                f"{'health max':>12}{'max/idle':>10}{'secs':>7}"
            )
            for name in names:
                Path(f"/proc/{srv.proc.pid}/clear_refs").write_text("5")
                before = peak(srv.proc.pid)
                t0 = time.monotonic()
                with HealthProbe(srv.url) as probe:
                    statuses = table[name]()
                secs = time.monotonic() - t0
                growth = peak(srv.proc.pid) - before
                raw = None if args.no_raw else raw_growth(name, tmp)
                lat = probe.lat or [0.0]
                row = {
                    "statuses": statuses,
                    "peak_growth_mib": growth / MiB,
                    "raw_library_growth_mib": None if raw is None else raw / MiB,
                    "health_p50_ms": statistics.median(lat) * 1000,
                    "health_max_ms": max(lat) * 1000,
                    "health_max_over_idle": max(lat) / idle_p50,
                    "seconds": secs,
                }
                results["attacks"][name] = row
                shown = ",".join(str(s) for s in sorted(set(statuses)))
                counts = f"{shown} x{len(statuses)}"
                rawtxt = "-" if raw is None else f"{raw / MiB:.0f}"
                print(
                    f"{name:<22}{counts:<28}{growth / MiB:>10.0f}{rawtxt:>10}{row['health_p50_ms']:>10.1f}ms"
                    f"{row['health_max_ms']:>10.1f}ms{row['health_max_over_idle']:>10.1f}{secs:>7.1f}"
                )
            assert httpx.get(srv.url + "/health", timeout=30).status_code == 200
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
