"""The export's manifest: each file's SHA-256 and size, the figures, and the ledger
revisions they came from. Written last, so it can vouch for every other file; anyone
can re-hash the folder and compare."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from processing.export.period_figures import PeriodFigures


def file_entry(path: Path) -> dict:
    """``{"sha256": ..., "bytes": ...}`` of one file."""
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def write_manifest(figures: PeriodFigures, files: list[Path], path: Path) -> Path:
    """Write ``manifest.json`` describing ``files`` (all in the export folder).

    Parameters
    ----------
    figures : PeriodFigures
    files : list of Path
        The export's files, the manifest excepted.
    path : Path
        Where to write the manifest.
    """
    calc = figures.calc
    manifest = {
        "site": figures.site.site,
        "period": {"first": figures.first.isoformat(), "last": figures.last.isoformat()},
        "methodology": figures.spec.methodology,
        "version": figures.spec.version,
        "status": figures.status,
        "simulated": figures.simulated,
        "figures": {"RE": calc.RE, "PE": calc.PE, "ER_unrounded": calc.ER_unrounded, "ER": calc.ER,
                    "provisional": calc.provisional, "unit": "tCO2"},
        "parameters": figures.parameters,
        "revisions": [r.to_dict() for r in figures.revisions],
        "files": {f.name: file_entry(f) for f in sorted(files)},
    }
    path.write_bytes((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return path
