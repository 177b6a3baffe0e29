"""The export's manifest: each file's SHA-256 and size, the figures, and the ledger
revisions they came from. Written after every other file, so it can vouch for them;
``SHA256SUMS`` beside it lists every file and the manifest in the format of
``sha256sum``, so that ``sha256sum -c SHA256SUMS`` in the folder checks the export."""

from __future__ import annotations

import ast
import functools
import hashlib
from importlib.metadata import version
from pathlib import Path

from openpyxl import LXML

from processing.export.csv_files import SIMULATED_NOTE
from processing.export.json_file import write_json
from processing.export.period_figures import PeriodFigures


#: the packages whose modules the exporter's imports are followed through (the rest is the libraries')
OWN = ("contract", "processing")


@functools.cache
def exporter_version() -> str:
    """What the export's files are made by: a hash of this package's code and labels and of the modules of
    ``contract/`` it imports (``exporter_files``: the texts of numbers and strings it writes), and the workbook
    library's release (its bytes depend on it) with that of the library it writes its XML with: lxml when
    installed (openpyxl then takes it), else et_xmlfile, whose XML differs from lxml's. The rest of
    ``processing/`` is the revisions' ``code_version``. ``jcm verify`` makes the summary pages, the workbook,
    the daily values and the manifest again, to compare them byte for byte, only when the manifest names this
    version: an edit to a module the exporter does not import (the MQTT connection, say) leaves it as it was."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for path in exporter_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    xml = f"lxml-{version('lxml')}" if LXML else f"et_xmlfile-{version('et_xmlfile')}"
    return f"export-{h.hexdigest()[:16]} openpyxl-{version('openpyxl')} {xml}"


def exporter_files(root: Path) -> list[Path]:
    """The files under ``root`` the exporter is made of, sorted: the modules and labels of ``processing/export/``
    and every module of ``contract/`` they import, directly or through the rest of ``processing/``, with the
    packages an import runs on the way; found from the code's import statements (those inside functions too,
    whether or not this process has run them yet), so that the list follows the code (no module of theirs
    imports one by a name it computes, which this cannot see)."""
    export = root / "processing" / "export"
    todo = [_module_name(p, root) for p in export.rglob("*.py")]
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen or (path := _module_file(name, root)) is None:
            continue
        seen[name] = path
        todo += _imports(path, name)
    hashed = [p for p in seen.values() if p.is_relative_to(export) or p.is_relative_to(root / "contract")]
    return sorted({*hashed, *export.rglob("*.json")})


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_file(name: str, root: Path) -> Path | None:
    """The file of module ``name`` if it is one of ``OWN``'s (a name imported from a module is none)."""
    if name.split(".")[0] not in OWN:
        return None
    base = root.joinpath(*name.split("."))
    return next((p for p in (base / "__init__.py", base.with_suffix(".py")) if p.is_file()), None)


def _imports(path: Path, name: str) -> set[str]:
    """The modules ``path`` (module ``name``) may import, with each package on the way; ``from m import x``
    gives ``m`` and ``m.x`` (x may be a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from this package, one up for each dot beyond the first
                base = ".".join([*package.split(".")[:package.count(".") + 2 - node.level], *filter(None, [base])])
            found.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return {".".join(n.split(".")[:i]) for n in found for i in range(1, n.count(".") + 2)}


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
