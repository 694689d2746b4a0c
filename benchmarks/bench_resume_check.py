"""What keying `score`'s resume on content costs: fingerprinting inputs and checking them on a rerun.

Creates ``--n`` files of ``--size`` bytes (photo-sized by default), then measures in the same run:

- stat: ``os.stat`` of every file (the baseline: a resume by names only stats nothing more than this);
- fingerprint, settled: :func:`file_fingerprint` of files last modified long ago (size, mtime, inode);
- check, settled: :func:`unchanged_since` against those fingerprints, as a rerun does for finished parts;
- fingerprint, just written: files modified moments before are hashed too (the racy case).

Prints files/s and the ratio to the stat baseline.

    python benchmarks/bench_resume_check.py
    python benchmarks/bench_resume_check.py --n 20000 --size 3000000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from clip_aesthetics.fileio import file_fingerprint, unchanged_since


def rate(work, items) -> float:
    start = time.perf_counter()
    for item in items:
        work(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--size", type=int, default=300_000, help="bytes per file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.urandom(args.size)
        files = [Path(tmp) / f"img{i:07d}.jpg" for i in range(args.n)]
        for file in files:
            file.write_bytes(data)
        fresh = rate(file_fingerprint, files[: max(1, args.n // 10)])  # modified moments ago: hashed
        day_ago = time.time() - 86400
        for file in files:
            os.utime(file, (day_ago, day_ago))
        baseline = rate(os.stat, files)
        settled = rate(file_fingerprint, files)
        recorded = {f: file_fingerprint(f) for f in files}
        check = rate(lambda f: unchanged_since(f, recorded[f]), files)
    print(f"{args.n} files of {args.size:,} bytes")
    print("| what | files/s | vs stat |\n|---|---:|---:|")
    for name, value in [
        ("os.stat (baseline)", baseline),
        ("fingerprint, settled files", settled),
        ("rerun check, settled files", check),
        ("fingerprint, files modified moments before (hashed)", fresh),
    ]:
        print(f"| {name} | {value:,.0f} | {value / baseline:.2f}x |")


if __name__ == "__main__":
    main()
