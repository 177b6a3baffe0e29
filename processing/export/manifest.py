"""The export's manifest: each file's SHA-256 and size, the figures, and the ledger
revisions they came from. Written after every other file, so it can vouch for them;
``SHA256SUMS`` beside it lists every file and the manifest in the format of
``sha256sum``, so that ``sha256sum -c SHA256SUMS`` in the folder checks the export."""

from __future__ import annotations

import functools
import hashlib
from importlib.metadata import version
from pathlib import Path

from openpyxl import LXML

from processing.export.csv_files import SIMULATED_NOTE
from processing.export.json_file import write_json
from processing.export.period_figures import PeriodFigures


@functools.cache
def exporter_version() -> str:
    """What the export's files are made by: a hash of this package's code and labels and of
    ``contract/`` (the texts of numbers and strings it writes), and the workbook library's release
    (its bytes depend on it) and, when it writes its XML with lxml (which it takes when installed), lxml's release
    (its XML differs from the standard library's); the rest of ``processing/`` is the revisions' ``code_version``.
    ``jcm verify`` makes the summary pages, the workbook, the daily values and the manifest again,
    to compare them byte for byte, only when the manifest names this version."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for root in (here, here.parents[1] / "contract"):
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json")):
            h.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes())
    return f"export-{h.hexdigest()[:16]} openpyxl-{version('openpyxl')}" + (f" lxml-{version('lxml')}" if LXML else "")


def file_entry(path: Path) -> dict:
    """``{"sha256": ..., "bytes": ...}`` of one file."""
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def file_entries(files: list[Path], folder: Path) -> dict[str, dict]:
    """``file_entry`` of each of ``files`` by its path in ``folder``, ``/``-separated
    (``custody/keys.json``), sorted: each file is read once (a year's raw readings are tens of MB)."""
    return {name: file_entry(f) for name, f in sorted(_named(files, folder).items())}


def write_manifest(figures: PeriodFigures, entries: dict[str, dict], path: Path, custody: dict,
                   dead_letters: dict) -> Path:
    """Write ``manifest.json`` describing the export's files, strict JSON
    (``json_file``: a parameter that is NaN is ``null``, an infinite one ``"Infinity"``).

    Parameters
    ----------
    figures : PeriodFigures
    entries : dict
        ``file_entries`` of the export's files, the manifest excepted.
    path : Path
        Where to write the manifest.
    custody : dict
        What the custody folder holds (``custody_folder.write_custody``).
    dead_letters : dict
        ``{"file": ..., "count": ...}``: the refused messages of the period and how many.
    """
    calc = figures.calc
    manifest = {
        "site": figures.site.site,
        "period": {"first": figures.first.isoformat(), "last": figures.last.isoformat()},
        "methodology": figures.spec.methodology,
        "version": figures.spec.version,
        "status": figures.status,
        "simulated": figures.simulated,
        "exporter": exporter_version(),
        "figures": {name: getattr(calc, name, None) for name in ("RE", "PE", "ER_unrounded", "ER_exact", "ER",
                                                                  "provisional")} | {"unit": "tCO2"},
        "parameters": figures.parameters,
        "fixed_parameters": [f.to_dict() for f in figures.fixed],
        "config_changes": figures.config_changes,
        "revisions": [r.to_dict() for r in figures.revisions],
        "custody": custody,
        "dead_letters": dead_letters,
        "files": entries,
    }
    return write_json(path, manifest, indent=2)


def write_sha256sums(entries: dict[str, dict], path: Path, simulated: bool) -> Path:
    """``<sha256>  <name>`` per file of ``entries`` (``file_entries``), sorted by name (GNU
    coreutils text format, which skips the ``#`` line of a simulated export)."""
    lines = [SIMULATED_NOTE] * simulated
    lines += [f"{entry['sha256']}  {name}\n" for name, entry in sorted(entries.items())]
    path.write_bytes("".join(lines).encode("utf-8"))
    return path


def _named(files: list[Path], folder: Path) -> dict[str, Path]:
    """Each file by its path in the export folder, ``/``-separated (``custody/keys.json``)."""
    return {f.relative_to(folder).as_posix(): f for f in files}
