"""Write numpy's float32 standard-normal draws for the native noise test.

Usage: gen_noise_reference.py OUT.bin [DRAWS_PER_SEED]
       gen_noise_reference.py --check NOISE_TEST_BINARY [DRAWS_PER_SEED]
         (writes the reference to a temporary file, runs the binary on it, returns its status)

The draws come from gligen_rt.core.noise.NoiseStream (numpy Generator(PCG64(seed))), called in
chunks of several sizes so the 32-bit buffering across calls is exercised. Format (little-endian):
b"GNRM1", u32 cases; per case: u64 seed, u64 state_hi, u64 state_lo, u64 inc_hi, u64 inc_lo
(PCG64 right after seeding), u32 chunks, u32 chunk sizes, then float32 draws.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile

from gligen_rt.core.noise import NoiseStream

SEEDS = (0, 1, 42, 12345, 2**32 + 5, 2**63 + 12345, 2**64 - 1)
MASK64 = (1 << 64) - 1


def chunks_for(total: int) -> list[int]:
    sizes = [1, 7, 3, 4096, 2 * 4 * 64 * 64 + 1]
    sizes.append(total - sum(sizes))
    return sizes


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "--check":
        total = int(argv[3]) if len(argv) > 3 else 1_000_000
        with tempfile.TemporaryDirectory() as tmp:
            ref = os.path.join(tmp, "noise.bin")
            write(ref, total)
            return subprocess.call([argv[2], ref])
    if len(argv) not in (2, 3):
        print("usage: gen_noise_reference.py OUT.bin [DRAWS_PER_SEED]", file=sys.stderr)
        return 2
    write(argv[1], int(argv[2]) if len(argv) == 3 else 1_000_000)
    return 0


def write(out: str, total: int) -> None:
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(b"GNRM1" + struct.pack("<I", len(SEEDS)))
        for seed in SEEDS:
            stream = NoiseStream(seed)
            st = stream._rng.bit_generator.state["state"]
            state, inc = int(st["state"]), int(st["inc"])
            sizes = chunks_for(total)
            fh.write(struct.pack("<QQQQQ", seed, state >> 64, state & MASK64, inc >> 64, inc & MASK64))
            fh.write(struct.pack(f"<I{len(sizes)}I", len(sizes), *sizes))
            for n in sizes:
                fh.write(stream.latents((n,)).astype("<f4").tobytes())
    os.replace(tmp, out)
    print(f"wrote {len(SEEDS)} seeds x {total} draws to {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
