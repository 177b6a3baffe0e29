"""The export's ``custody/`` folder (layout: ``contract.custody``): the signed messages of
the readings the figures are computed from (``recompute.message_window``), bytes as
received, the site's public keys valid in that time, and the collector's sequence
findings there (``custody/findings.json``), which explain the gaps of the chains and
which the processor reads too. An export of readings that were not signed has no
custody folder, and its manifest says 0 signed messages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

from contract.custody import write_folder
from contract.store import ReadingStore, SequenceFinding
from processing.export.period_figures import PeriodFigures
from processing.export.recompute import message_window

FINDINGS = "findings.json"


def write_custody(figures: PeriodFigures, store: ReadingStore, folder: Path) -> tuple[list[Path], dict]:
    """Write ``folder/custody``; its files and the manifest's ``custody`` entry."""
    site = figures.site
    start, end = message_window(site, figures.first, figures.last)
    entry = {"signed_messages": 0, "from": start.isoformat(), "to": end.isoformat(), "keys": [], "findings": 0}
    # the store's read API of signed messages comes with the collector's custody checks
    signed = getattr(store, "signed_messages", None)
    count = [0]

    def counted(messages) -> Iterator[bytes]:
        for m in messages:
            count[0] += 1
            yield m

    if signed is None:
        return [], entry
    keys = [k for k in site.custody.keys if k.valid_from < end and (k.valid_to is None or k.valid_to > start)]
    root = write_folder(folder, {site.site: keys}, counted(signed(site.site, start, end)))
    if not count[0]:
        for f in sorted(root.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        root.rmdir()
        return [], entry
    findings = [f for f in store.sequence_findings(site.site) if _overlaps(f, start, end)]
    (root / FINDINGS).write_text(json.dumps([finding_record(f) for f in findings], indent=1) + "\n")
    entry.update(signed_messages=count[0], findings=len(findings),
                 keys=[{"id": k.id, "fingerprint": k.fingerprint} for k in keys])
    return sorted(f for f in root.rglob("*") if f.is_file()), entry


def _overlaps(f: SequenceFinding, start: dt.datetime, end: dt.datetime) -> bool:
    return (f.start or f.noticed) < end and (f.end or f.noticed) >= start


def finding_record(f: SequenceFinding) -> dict:
    """A sequence finding as JSON: its fields, times in ISO 8601."""
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in dataclasses.asdict(f).items()}


def read_findings(path: Path) -> list[SequenceFinding]:
    """``custody/findings.json``; ``ValueError`` naming the file and the finding."""
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path.name}: cannot read: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path.name}: not JSON: {exc}") from None
    if not isinstance(listed, list):
        raise ValueError(f"{path.name}: not a list of findings")
    types = {f.name: f.type for f in dataclasses.fields(SequenceFinding)}
    out = []
    for i, record in enumerate(listed, 1):
        try:
            fields = {}
            for k, v in record.items():
                kind = types[k]
                if "datetime" in kind and (v is not None or "None" not in kind):
                    v = dt.datetime.fromisoformat(v)
                    if v.tzinfo is None:
                        raise ValueError(f"{k}: a time without its zone")
                elif (kind == "int" and type(v) is not int) or (kind == "str" and not isinstance(v, str)):
                    raise ValueError(f"{k}: not a{'n integer' if kind == 'int' else ' text'}")
                fields[k] = v
            out.append(SequenceFinding(**fields))
        except KeyError as exc:
            raise ValueError(f"{path.name}: finding {i}: unknown field {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path.name}: finding {i}: {exc}") from None
    return out
