"""``jcm verify EXPORT_DIR``: check the signed messages of an export's custody folder
(``contract.custody``) with nothing but the folder, and print a verdict."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from contract.custody import chain_breaks, pem_problems, read_folder, verify
from contract.text import printable

#: refusals, and breaks per chain, listed one by one; beyond it they are counted
MAX_LISTED = 50


def verify_folder(folder: Path) -> tuple[bool, list[str]]:
    """Whether every message verified and every chain is whole, and the report's lines."""
    keys, lines = read_folder(folder)
    refused: list[str] = []
    reasons: Counter[str] = Counter()
    refused_seqs: dict[tuple, dict[int, str]] = {}  # what a gap may be explained by
    chains: dict[tuple, list[int]] = {}  # chain -> [messages, lowest seq, highest seq]
    n = 0

    def verified():
        nonlocal n
        for line in lines:
            n += 1
            v = verify(line.message, keys)
            if v.ok:
                seq = v.reading.seq
                c = chains.setdefault(v.chain, [0, seq, seq])
                c[0], c[1], c[2] = c[0] + 1, min(c[1], seq), max(c[2], seq)
                yield v
                continue
            reasons[v.kind] += 1
            where = f"{line.where}" + (f" {'/'.join(v.chain)} seq {v.reading.seq}" if v.reading else "")
            if v.reading:
                refused_seqs.setdefault(v.chain, {})[v.reading.seq] = v.reason
            if len(refused) < MAX_LISTED:
                refused.append(f"  {where}: {v.reason}")

    breaks = chain_breaks(verified())
    out = [f"custody of {folder}",
           f"keys: {sum(len(k) for k in keys.values())} of {len(keys)} site(s): "
           + ", ".join(f"{k.id} ({site}, fingerprint {k.fingerprint[:16]}...)" for site, ks in sorted(keys.items())
                       for k in ks),
           f"messages: {n}, signatures verified: {n - sum(reasons.values())}, refused: {sum(reasons.values())}"]
    pems = pem_problems(folder, keys)
    out += [f"key file {p}" for p in pems]
    out += refused
    if sum(reasons.values()) > len(refused):
        out.append(f"  ... and {sum(reasons.values()) - len(refused)} more: "
                   + ", ".join(f"{r}: {c}" for r, c in reasons.most_common()))
    by_chain: dict[tuple, list] = {}
    for b in breaks:
        by_chain.setdefault(b.chain, []).append(b)
    for chain, (count, low, high) in sorted(chains.items()):
        out.append(f"chain {'/'.join(chain)}: seq {low}..{high}, {count} verified message(s)")
        listed = by_chain.get(chain, [])
        for b in listed[:MAX_LISTED]:
            cause = sorted({r for s, r in refused_seqs.get(chain, {}).items() if b.first_seq <= s <= b.last_seq})
            out.append(f"  {b}" + (f" (refused there: {'; '.join(cause)})" if cause and b.kind == "gap" else ""))
        if len(listed) > MAX_LISTED:
            out.append(f"  ... and {len(listed) - MAX_LISTED} more: " + ", ".join(
                f"{k}: {c}" for k, c in Counter(b.kind for b in listed[MAX_LISTED:]).most_common()))
    ok = not reasons and not breaks and not pems and n > 0
    problems = [f"{len(pems)} key file(s) not as keys.json"] if pems else []
    problems += [f"{sum(reasons.values())} message(s) refused"] if reasons else []
    problems += [f"{len(breaks)} chain break(s)"] if breaks else []
    problems += ["no messages"] if n == 0 else []
    out.append("VERDICT: " + ("PASSED: every signature verified, every chain whole" if ok
                              else "FAILED: " + ", ".join(problems)))
    return ok, [printable(line) for line in out]
