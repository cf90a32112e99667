"""
Cost of finding remembered secrets in output (a benchmark, not a test).

    .venv/py311/bin/python bench/secrets_bench.py [--rounds 5]

Times `auditing.secrets.SecretMemory.mask` on outputs of growing length, for a full memory (32
secrets, chosen to be hard: regex metacharacters, shared prefixes, Unicode) and for secrets carried
over a reload (found by rolling fingerprint). Linear time shows as a flat cost per character.
Needs no Evennia: the memory is plain Python + RE2.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from auditing.secrets import MAX_SECRETS, SecretMemory  # noqa: E402

HARD = [f"a(a|b)*{n}.+?[x]{{2,}}\\" + "ü密" * (n % 5) + "aaaa" * n for n in range(MAX_SECRETS)]


def timed(function, rounds):
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    key = os.urandom(32)
    clear = SecretMemory()
    for secret in HARD:
        clear.remember(secret, now=0)
    carried = SecretMemory()
    carried.load(clear.export(key, now=0)[-4:], now=0)  # 4 carried-over secrets (4 lengths)
    print("| output chars | 32 secrets in memory: µs (ns/char) | 4 carried over a reload: ms (µs/char) |")
    print("|---|---|---|")
    for length in (100, 1_000, 6_000, 60_000):
        text = ("aaaa(a|b)*" * (length // 10 + 1))[:length]  # near-misses everywhere
        clear_cost = timed(lambda: clear.mask(text, now=1), args.rounds)
        carried_cost = timed(lambda: carried.mask(text, now=1, key=key), args.rounds)
        print(f"| {length:,} | {clear_cost * 1e6:,.1f} ({clear_cost * 1e9 / length:.1f}) "
              f"| {carried_cost * 1e3:,.2f} ({carried_cost * 1e6 / length:.2f}) |")


if __name__ == "__main__":
    main()
