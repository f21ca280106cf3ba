"""Chunked vs whole-recording MedASR decoding: wall time and peak RSS on a tiny random `lasr_ctc` checkpoint.

Each configuration runs in its own process (so its peak RSS is its own) on espeak-ng speech repeated to the asked
length. The tiny model (2 layers, 32 wide) shows how memory grows with recording length, not MedASR's own numbers.

    python benchmarks/asr_chunking.py                 # 2.5 and 5 minutes; chunk 20 s (batch 1 and 8) and whole
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = [(20.0, 1), (20.0, 8), (0.0, 1)]  # (chunk_length_s, batch_size)


def _one(model: str, wav: str, minutes: float, chunk: float, batch: int) -> None:
    import numpy as np

    from medgemma_toolkit.asr.audio import SAMPLE_RATE, Audio, load_audio
    from medgemma_toolkit.asr.transcribe import Transcriber

    t = Transcriber.load(model, device="cpu")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    speech = load_audio(wav).samples
    audio = Audio(np.resize(speech, int(minutes * 60 * SAMPLE_RATE)), SAMPLE_RATE, 1)
    t0 = time.perf_counter()
    r = next(t.transcribe_audio([audio], ["x"], chunk_length_s=chunk, stride_length_s=2.0, batch_size=batch))
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "minutes": minutes,
                "chunk_s": chunk,
                "batch": batch,
                "seconds": round(dt, 2),
                "rss_after_load_mib": round(base),
                "peak_rss_mib": round(peak),
                "words": len(r.words),
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        _one(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
        return
    from medgemma_toolkit.testing.tiny_asr import build_tiny_asr

    with tempfile.TemporaryDirectory() as d:
        model = str(build_tiny_asr(Path(d) / "tiny-medasr"))
        wav = str(Path(d) / "speech.wav")
        text = "Findings: small left pleural effusion with adjacent atelectasis. No pneumothorax. " * 4
        subprocess.run(["espeak-ng", "-w", wav, text], check=True)
        for minutes in (2.5, 5.0):
            for chunk, batch in CONFIGS:
                args = [sys.executable, __file__, "--one", model, wav, str(minutes), str(chunk), str(batch)]
                out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
                print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
