"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) as the functions that take the time.

    python bench/profile_summary.py PROFILE.txt [--top 25] [--under FUNCTION] [--lines]

Prints, for each function, its share of all samples *inclusive* (the function or anything
it calls is on the stack) and *self* (the function is the innermost frame). ``--under``
keeps only the stacks that pass through a function (e.g. ``Gateway.poll_device``), so
that a poll path's cost can be split without the other threads' samples. ``--lines``
keeps line numbers, to tell e.g. waiting for a lock (the ``with`` line) from the work
done under it.

``bench/polling_throughput.py --profile`` writes two such files per run: ``*-gil.txt``
(samples where a thread holds the GIL: where the CPU goes) and ``*-wall.txt`` (idle
threads included: where the wall time goes, lock waits and fsync included).
"""

from __future__ import annotations

import argparse
import re
import signal
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")


def parse(path: Path, lines: bool = False) -> list[tuple[list[str], int]]:
    """Stacks as (frames outermost first, sample count); a frame is 'function (file)' or, with
    ``lines``, 'function (file:line)'."""
    stacks = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = []
        for raw in stack.split(";"):
            m = FRAME.match(raw)
            frames.append(raw if lines or not m else f"{m['func']} ({m['file']})")
        stacks.append((frames, int(count)))
    return stacks


def summarise(stacks, top: int = 25, under: str | None = None) -> dict:
    if under:
        stacks = [(f, n) for f, n in stacks if any(under in x for x in f)]
    total = sum(n for _, n in stacks) or 1
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    for frames, n in stacks:
        for name in set(frames):
            inclusive[name] += n
        self_[frames[-1]] += n
    return {
        "samples": total,
        "inclusive": [(name, 100.0 * n / total) for name, n in inclusive.most_common(top)],
        "self": [(name, 100.0 * n / total) for name, n in self_.most_common(top)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--under", help="only stacks through this function (substring of 'func (file)')")
    ap.add_argument("--lines", action="store_true", help="keep line numbers in frames")
    args = ap.parse_args()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    s = summarise(parse(args.profile, args.lines), args.top, args.under)
    print(f"{s['samples']} samples{' under ' + args.under if args.under else ''}")
    for title in ("inclusive", "self"):
        print(f"\n{title:>9} %  function")
        for name, pct in s[title]:
            print(f"{pct:>11.1f}  {name}")


if __name__ == "__main__":
    main()
