"""The monitoring workbook, laid out like a JCM Monitoring Spreadsheet.

Sheets: the monitoring plan (what is monitored, how, from which meters, with which
default values), the monitoring report (the period's values and the RE/PE/ER
calculation as live formulas, the Python figures beside them), then the monthly
revisions used, the daily values, the QA findings and the adjustments.

The file is byte-identical for the same inputs: its document properties carry a date
derived from the period, and the zip is rewritten with fixed entry dates and order.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import zipfile
from pathlib import Path

from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet
from openpyxl.writer.excel import ExcelWriter

from contract.config.site import MonitoringPoint
from processing.export.equations import write_calculation
from processing.export.period_figures import PeriodFigures
from processing.period import DERIVED_FROM

BOLD = Font(bold=True)
TITLE = Font(bold=True, size=14)
BANNER = Font(bold=True, color="C00000", size=12)
NUMBER = "#,##0.000000"
#: parameters the processor derives from several monitoring points (``PeriodProcessor._flare``)
FINDING_COLUMNS = ["month", "revision", "check", "source", "severity", "detail", "start", "end", "amount"]
ADJUSTMENT_COLUMNS = ["month", "revision", "kind", "parameter", "source", "meter", "days", "before", "factor", "after",
                      "reason"]
#: Monitoring report: the column holding every value the formulas read, and the formulas
VALUE = "C"


def _clean(value):
    """Cell value: NaN is an empty cell (Excel has no NaN)."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _put(ws: Worksheet, row: int, col: int, value, font: Font | None = None) -> None:
    cell = ws.cell(row=row, column=col, value=_clean(value))
    if font is not None:
        cell.font = font
    if isinstance(value, float):
        cell.number_format = NUMBER
    elif isinstance(value, dt.date):
        cell.number_format = "yyyy-mm-dd"


def _row(ws: Worksheet, row: int, values: list, font: Font | None = None) -> None:
    for col, value in enumerate(values, start=1):
        _put(ws, row, col, value, font)


def _table(ws: Worksheet, row: int, headers: list[str], rows: list[list]) -> int:
    """Write a header and its rows from ``row``; return the next row after one blank."""
    _row(ws, row, headers, BOLD)
    for i, values in enumerate(rows, start=1):
        _row(ws, row + i, values)
    return row + len(rows) + 2


def _facts(ws: Worksheet, row: int, facts: list[tuple[str, object]]) -> int:
    for i, (label, value) in enumerate(facts):
        _put(ws, row + i, 1, label, BOLD)
        _put(ws, row + i, 2, value)
    return row + len(facts) + 1


def _widths(ws: Worksheet, widths: list[int]) -> None:
    for col, width in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(col)].width = width


def _sources(m: MonitoringPoint) -> str:
    """A monitoring point's sources, and the power that cross-checks them if any."""
    check = f"; cross-check: {m.power_source} × {m.power_sign:g}, integrated" if m.power_source else ""
    return ", ".join(m.sources) + check


def _point_label(figures: PeriodFigures, parameter: str, unit_id: str | None) -> tuple[str, str]:
    """Monitoring point number(s) and sources of a monitored parameter (of one unit)."""
    site = figures.site
    points = [m for m in site.monitoring if m.parameter == parameter and m.unit_id in (unit_id, None)]
    if points:
        return ", ".join(m.number for m in points), "; ".join(_sources(m) for m in points)
    derived = DERIVED_FROM.get(figures.spec.methodology, {}).get(parameter, ())
    inputs = [m for m in site.monitoring if m.parameter in derived]
    return (", ".join(m.number for m in inputs),
            "derived by the processor from " + ", ".join(f"{m.number} {m.parameter}" for m in inputs))


def _plan(ws: Worksheet, figures: PeriodFigures) -> None:
    spec, site = figures.spec, figures.site
    ws["A1"] = f"Monitoring plan: {spec.methodology} Ver{spec.version}"
    ws["A1"].font = TITLE
    row = _facts(ws, 3, [
        ("Methodology", spec.methodology), ("Version", spec.version), ("Title", spec.title),
        ("Methodology status", spec.status), ("Source", spec.source),
        ("Rounding of the period's ER", spec.rounding), ("Project", site.jcm_project), ("Site", site.site),
    ])
    rows = []
    for name, p in spec.parameters.items():
        default = spec.defaults.get(name)
        default_cols = [default.value, default.unit, default.status, default.source] if default else [None] * 4
        points = [m for m in site.monitoring if m.parameter == name]
        if p.kind == "monitored" and not points:
            number, sources = _point_label(figures, name, None)
            points_cols = [[number, None, sources]]
        else:
            points_cols = [[m.number, m.unit_id, _sources(m)] for m in points] or [[None, None, None]]
        for cols in points_cols:
            rows.append([name, p.description, p.unit, p.kind, "yes" if p.per_unit else "no", p.effect, p.option,
                         *cols, *default_cols])
    ws.cell(row=row, column=1, value="Parameters").font = BOLD
    row = _table(ws, row + 1, ["Symbol", "Description", "Unit", "Kind", "Per unit", "Effect on ER", "Monitoring option",
                               "Monitoring point", "Unit id", "Sources (device.channel)", "Default value",
                               "Default unit", "Default status", "Default source"], rows)
    ws.cell(row=row, column=1, value="Site fixed parameters").font = BOLD
    row = _table(ws, row + 1, ["Parameter", "Unit id", "Value", "Unit", "Source", "Status"],
                 [[p.parameter, p.unit_id, p.value, p.unit, p.source, p.status] for p in site.fixed_parameters])
    ws.cell(row=row, column=1, value="Other monitoring points (QA only, not methodology inputs)").font = BOLD
    row = _table(ws, row + 1, ["Monitoring point", "Parameter", "Unit id", "Sources (device.channel)", "Description"],
                 [[m.number, m.parameter, m.unit_id, _sources(m), m.description]
                  for m in site.monitoring if m.parameter not in spec.parameters])
    if spec.constants:
        ws.cell(row=row, column=1, value="Constants").font = BOLD
        _table(ws, row + 1, ["Name", "Value", "Unit", "Source"],
               [[n, c.value, c.unit, c.source] for n, c in spec.constants.items()])
    _widths(ws, [26, 60, 12, 11, 9, 12, 10, 16, 10, 44, 13, 13, 13, 60])


def _report(ws: Worksheet, figures: PeriodFigures) -> None:
    """Inputs in column C, then the calculation steps whose formulas read them."""
    spec, site, calc = figures.spec, figures.site, figures.calc
    ws["A1"] = f"Monitoring report: {site.jcm_project}"
    ws["A1"].font = TITLE
    if figures.simulated:
        ws["A2"] = "SIMULATED DATA: these readings come from the simulator, not from the plant's meters"
        ws["A2"].font = BANNER
    row = _facts(ws, 4, [
        ("Project", site.jcm_project), ("Site", f"{site.site}: {site.name}"), ("Country", site.country),
        ("Methodology", f"{spec.methodology} Ver{spec.version}: {spec.title}"), ("Methodology status", spec.status),
        ("Monitoring period start", figures.first), ("Monitoring period end", figures.last),
        ("Days", (figures.last - figures.first).days + 1), ("Status", figures.status),
        ("Provisional", "yes" if calc.provisional else "no"),
        ("Ledger revisions used", ", ".join(f"{r.month} r{r.revision}" for r in figures.revisions)),
    ])

    cells: dict[tuple[str, str | None], str] = {}
    units_by_id = {u["id"]: u for u in calc.units}

    def inputs(kind: str) -> list[tuple[str, str | None, float]]:
        out = []
        for name, p in spec.parameters.items():
            if p.kind != kind:
                continue
            if p.per_unit:
                out += [(name, uid, u[name]) for uid, u in units_by_id.items()]
            else:
                out.append((name, None, calc.parameters[name]))
        return out

    ws.cell(row=row, column=1, value="Monitored parameters: period totals").font = BOLD
    row += 1
    _row(ws, row, ["Symbol", "Unit id", "Value", "Unit", "Monitoring option", "Monitoring point",
                   "Sources (device.channel)", "Description"], BOLD)
    for name, uid, value in inputs("monitored"):
        row += 1
        p = spec.parameters[name]
        number, sources = _point_label(figures, name, uid)
        _row(ws, row, [name, uid, float(value), p.unit, p.option, number, sources, p.description])
        cells[(name, uid)] = f"{VALUE}{row}"

    fixed = {(f.parameter, f.unit_id): f for f in figures.fixed}
    row += 2
    ws.cell(row=row, column=1, value="Fixed parameters (ex ante), as recorded in the ledger revisions used").font = BOLD
    row += 1
    _row(ws, row, ["Symbol", "Unit id", "Value", "Unit", "Origin", "Source", "Status", "As configured"], BOLD)
    for name, uid, value in inputs("fixed"):
        row += 1
        f = fixed[(name, uid)]
        _row(ws, row, [name, uid, float(value), spec.parameters[name].unit, f.origin, f.source, f.status, f.configured])
        cells[(name, uid)] = f"{VALUE}{row}"
    if figures.config_changes:
        row += 2
        ws.cell(row=row, column=1, value="Configuration changed since the revisions used (not applied here)").font = BOLD
        for line in figures.config_changes:
            row += 1
            ws.cell(row=row, column=1, value=line)

    row += 2
    ws.cell(row=row, column=1, value="Calculation (live formulas; column E is the processor's figure)").font = BOLD
    row += 1
    _row(ws, row, ["Symbol", "Unit id", "Value", "Unit", "Check (Python)", "Equation"], BOLD)
    cursor = [row]

    def put(symbol: str, uid: str | None, formula: str, unit: str, check: float, equation: str) -> str:
        cursor[0] += 1
        r = cursor[0]
        _row(ws, r, [symbol, uid, None, unit, float(check), equation])
        ws[f"{VALUE}{r}"] = formula
        ws[f"{VALUE}{r}"].number_format = NUMBER
        return f"{VALUE}{r}"

    er_cell = write_calculation(calc, spec.rounding, lambda name, uid: cells[(name, uid)], put)
    for cell in (ws[er_cell], ws[f"E{cursor[0]}"]):  # the rounded ER and its check: whole tonnes
        cell.number_format = "#,##0"
        cell.font = BOLD
    ws.cell(row=cursor[0] + 2, column=1,
            value="The period's ER is computed from the period's summed parameters and rounded once; "
                  "monthly figures (sheet Monthly) are never added up.")
    _widths(ws, [26, 44, 20, 12, 20, 60, 44, 60])


def _monthly(ws: Worksheet, figures: PeriodFigures) -> None:
    rows = [[r.month, r.revision, r.created, r.status, "yes" if r.signed_off else "no", r.signed_by, r.signed_at,
             r.RE, r.PE, r.ER_unrounded, r.ER, "yes" if r.provisional else "no", r.input_hash, r.code_version]
            for r in figures.revisions]
    row = _table(ws, 1, ["Month", "Revision", "Created", "Status", "Signed off", "Signed by", "Signed at", "RE", "PE",
                         "ER_unrounded", "ER", "Provisional", "Input hash", "Code version"], rows)
    ws.cell(row=row, column=1, value="Whole-month figures of each revision used, for reference. The period's ER "
                                     "(sheet Monitoring report) is computed from the period's days, not from these.")
    _widths(ws, [9, 9, 26, 13, 10, 18, 26, 16, 16, 16, 10, 11, 66, 28])


def _daily(ws: Worksheet, figures: PeriodFigures) -> None:
    table = figures.daily.pivot(index="day", columns="key", values="value").sort_index()
    keys = sorted(table.columns)
    units = figures.daily.drop_duplicates("key").set_index("key")["unit"]
    _row(ws, 1, ["Day", *keys], BOLD)
    _row(ws, 2, ["unit", *[units[k] for k in keys]], BOLD)
    for i, (day, values) in enumerate(table[keys].iterrows(), start=3):
        _row(ws, i, [day, *[float(v) for v in values]])
    ws.freeze_panes = "B3"
    _widths(ws, [12] + [18] * len(keys))


def _records(ws: Worksheet, rows: list[dict], known: list[str]) -> None:
    columns = known + sorted({k for r in rows for k in r} - set(known))
    _table(ws, 1, columns, [[r.get(c) for c in columns] for r in rows])
    _widths(ws, [9, 9] + [18] * (len(columns) - 2))


def build(figures: PeriodFigures) -> Workbook:
    """The workbook of a period, in memory."""
    wb = Workbook()
    _plan(wb.active, figures)
    wb.active.title = "Monitoring plan"
    _report(wb.create_sheet("Monitoring report"), figures)
    _monthly(wb.create_sheet("Monthly"), figures)
    _daily(wb.create_sheet("Daily"), figures)
    _records(wb.create_sheet("QA findings"), figures.findings, FINDING_COLUMNS)
    _records(wb.create_sheet("Adjustments"), figures.adjustments, ADJUSTMENT_COLUMNS)
    return wb


def deterministic_bytes(wb: Workbook, when: dt.datetime) -> bytes:
    """Serialise ``wb`` with ``when`` as its created/modified date and as every zip
    entry's date, entries in name order: same workbook, same bytes."""
    wb.properties.creator = "jcm-telemetry"
    wb.properties.lastModifiedBy = "jcm-telemetry"
    wb.properties.created = wb.properties.modified = when
    raw = io.BytesIO()
    ExcelWriter(wb, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED)).save()  # unlike wb.save, keeps `modified`
    out = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(out, "w") as dst:
        for name in sorted(src.namelist()):
            info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            dst.writestr(info, src.read(name))
    return out.getvalue()


def write_workbook(figures: PeriodFigures, path: Path) -> Path:
    """Write the period's monitoring workbook to ``path``."""
    path.write_bytes(deterministic_bytes(build(figures), figures.stamp))
    return path
