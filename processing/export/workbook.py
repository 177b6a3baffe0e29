"""The monitoring workbook, laid out like a JCM Monitoring Spreadsheet.

Sheets: the monitoring plan (what is monitored, how, from which meters, with which
default values), the monitoring report (the period's totals as live ``=SUM(Daily!...)``
formulas, derived parameters with their inputs, and the RE/PE/ER calculation as live
formulas, the Python figures beside them), then the monthly revisions used, the daily
values, the QA findings and the adjustments. Every sheet of a simulated export says so
in its first rows; column widths follow their content.

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
from processing.export.period_figures import CANNOT_COMPUTE, PeriodFigures
from processing.methodologies.common import exact_sum
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
SIMULATED = "SIMULATED DATA: these readings come from the simulator, not from the plant's meters"
#: Daily sheet: header row, units row, then one row per day, below the banner rows if any
DAILY = "Daily"
#: widest column [characters]; a longer text overflows or wraps
MAX_WIDTH = 80


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


def _banner(ws: Worksheet, figures: PeriodFigures, row: int = 1) -> int:
    """The simulated-data banner at ``row`` of a simulated export; returns the first row
    free for the sheet's content."""
    if not figures.simulated:
        return row
    ws.cell(row=row, column=1, value=SIMULATED).font = BANNER
    ws.sheet_properties.tabColor = "C00000"
    return row + 2


def _shown(value) -> str:
    """The text a cell shows, as long as it is displayed."""
    if isinstance(value, str) and value.startswith("="):
        return "0" * 16  # a computed figure: as wide as a large number with 6 decimals
    if isinstance(value, float):
        return f"{value:,.6f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dt.date):
        return "yyyy-mm-dd"
    return "" if value is None else str(value)


def _fit_columns(ws: Worksheet) -> None:
    """Each column as wide as its widest cell, counting only rows of more than one cell:
    titles, banners and notes stand alone in their row and overflow into empty neighbours."""
    widths: dict[int, int] = {}
    for cells in ws.iter_rows():
        filled = [c for c in cells if c.value is not None]
        if len(filled) < 2:
            continue
        for c in filled:
            lines = _shown(c.value).split("\n")
            widths[c.column] = max(widths.get(c.column, 0), max(len(line) for line in lines))
    for col, width in widths.items():
        ws.column_dimensions[get_column_letter(col)].width = min(MAX_WIDTH, width + 2)


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
    _banner(ws, figures, 2)
    row = _facts(ws, 4 if figures.simulated else 3, [
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


def _report(ws: Worksheet, figures: PeriodFigures) -> None:
    """Inputs in column C, then the calculation steps whose formulas read them."""
    spec, site, calc = figures.spec, figures.site, figures.calc
    ws["A1"] = f"Monitoring report: {site.jcm_project}"
    ws["A1"].font = TITLE
    _banner(ws, figures, 2)
    row = _facts(ws, 4, [
        ("Project", site.jcm_project), ("Site", f"{site.site}: {site.name}"), ("Country", site.country),
        ("Methodology", f"{spec.methodology} Ver{spec.version}: {spec.title}"), ("Methodology status", spec.status),
        ("Monitoring period start", figures.first), ("Monitoring period end", figures.last),
        ("Days", (figures.last - figures.first).days + 1), ("Status", figures.status),
        ("Provisional", "-" if calc is None else "yes" if calc.provisional else "no"),
        ("Ledger revisions used", ", ".join(f"{r.month} r{r.revision}" for r in figures.revisions)),
    ])
    if calc is None:  # failed: no figure to show or to make a formula of
        for line in [r for r in figures.reasons if r.startswith(CANNOT_COMPUTE)]:
            ws.cell(row=row, column=1, value=line).font = BOLD
            row += 1
        return

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

    refs = _daily_refs(figures)
    ws.cell(row=row, column=1, value="Monitored parameters: period totals (live sums of sheet Daily; column E is "
                                     "the processor's figure)").font = BOLD
    row += 1
    _row(ws, row, ["Symbol", "Unit id", "Value", "Unit", "Check (Python)", "Monitoring option", "Monitoring point",
                   "Sources (device.channel)", "Description"], BOLD)
    for name, uid, value in inputs("monitored"):
        row += 1
        p = spec.parameters[name]
        number, sources = _point_label(figures, name, uid)
        key = f"{name}[{uid}]" if f"{name}[{uid}]" in refs else name
        _row(ws, row, [name, uid, float(value), p.unit, float(value), p.option, number, sources, p.description])
        if key in refs:
            ws[f"{VALUE}{row}"] = f"=SUM({refs[key]})"
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
    if {"CH4_flare", "CH4_flare_burning"} <= set(refs) and ("GWP_CH4", None) in cells:
        row = _flare_inputs(ws, row + 2, figures, refs, cells[("GWP_CH4", None)])
    if figures.config_changes:
        row += 2
        ws.cell(row=row, column=1,
                value="Configuration changed since the revisions used (not applied here)").font = BOLD
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


def _flare_inputs(ws: Worksheet, row: int, figures: PeriodFigures, refs: dict[str, str], gwp_cell: str) -> int:
    """PE_flare with its inputs: the methane sent to the flare, the part sent while the
    flame burned, and the constants, recombined by a live formula; returns the last row."""
    constants = figures.spec.constants
    _, sources = _point_label(figures, "PE_flare", None)
    ws.cell(row=row, column=1, value=f"PE_flare, a derived parameter: {sources}, interval by interval").font = BOLD
    row += 1
    _row(ws, row, ["Symbol", "Unit id", "Value", "Unit", "Check (Python)", "Equation"], BOLD)
    sums = {k: float(exact_sum(figures.daily.loc[figures.daily["key"] == k, "value"].dropna()))
            for k in ("CH4_flare", "CH4_flare_burning")}
    rho, eta = constants["CH4_density"].value, constants["eta_flare_burning"].value
    gwp = next(f.value for f in figures.fixed if f.key == "GWP_CH4")
    steps = [
        ("CH4_flare", f"=SUM({refs['CH4_flare']})", "Nm3", sums["CH4_flare"],
         "Σ_i BG_flare,i × w_CH4,i: methane sent to the flare (w_CH4 the highest reading of interval i, "
         "the period's highest where there is none)"),
        ("CH4_flare_burning", f"=SUM({refs['CH4_flare_burning']})", "Nm3", sums["CH4_flare_burning"],
         "the part of it sent while the flame detector reported burning throughout the interval (missing status: "
         "not burning)"),
        ("rho_CH4", rho, constants["CH4_density"].unit, rho, constants["CH4_density"].source),
        ("eta_flare", eta, constants["eta_flare_burning"].unit, eta, constants["eta_flare_burning"].source),
        ("GWP_CH4", f"={gwp_cell}", "-", gwp, "the fixed parameter above"),
    ]
    at = {}
    for symbol, value, unit, check, equation in steps:
        row += 1
        _row(ws, row, [symbol, None, value, unit, float(check), equation])
        at[symbol] = f"{VALUE}{row}"
    row += 1
    _row(ws, row, ["PE_flare (from inputs)", None,
                   f"=({at['CH4_flare']}-{at['eta_flare']}*{at['CH4_flare_burning']})*{at['rho_CH4']}"
                   f"*{at['GWP_CH4']}*0.001", "tCO2e",
                   (sums["CH4_flare"] - eta * sums["CH4_flare_burning"]) * rho * gwp * 1e-3,
                   "PE_flare = (CH4_flare − η_flare × CH4_flare_burning) × ρ_CH4 × GWP_CH4 × 10⁻³; the PE_flare used "
                   "above is the same unless days without flare data were filled or a late calibration corrected it (sheet "
                   "Adjustments)"])
    ws[f"{VALUE}{row}"].number_format = NUMBER
    return row


def _monthly(ws: Worksheet, figures: PeriodFigures) -> None:
    top = _banner(ws, figures)
    rows = [[r.month, r.revision, r.created, r.status, "yes" if r.signed_off else "no", r.signed_by, r.signed_at,
             r.RE, r.PE, r.ER_unrounded, r.ER, "yes" if r.provisional else "no", r.input_hash, r.input_hash_version,
             r.code_version]
            for r in figures.revisions]
    row = _table(ws, top, ["Month", "Revision", "Created", "Status", "Signed off", "Signed by", "Signed at", "RE", "PE",
                         "ER_unrounded", "ER", "Provisional", "Input hash", "Input hash version", "Code version"],
                 rows)
    ws.cell(row=row, column=1, value="Whole-month figures of each revision used, for reference. The period's ER "
                                     "(sheet Monitoring report) is computed from the period's days, not from these.")


def _daily_table(figures: PeriodFigures):
    """Days by key, keys sorted: the Daily sheet's body."""
    table = figures.daily.pivot(index="day", columns="key", values="value").sort_index()
    return table[sorted(table.columns)]


def _daily_top(figures: PeriodFigures) -> int:
    """The Daily sheet's header row (below the banner of a simulated export)."""
    return 3 if figures.simulated else 1


def _daily_refs(figures: PeriodFigures) -> dict[str, str]:
    """``{key: "Daily!B5:B14"}``: the cells of each key's daily values."""
    table = _daily_table(figures)
    first = _daily_top(figures) + 2
    last = first + len(table) - 1
    return {k: f"{DAILY}!{get_column_letter(c)}{first}:{get_column_letter(c)}{last}"
            for c, k in enumerate(table.columns, start=2)}


def _daily(ws: Worksheet, figures: PeriodFigures) -> None:
    table = _daily_table(figures)
    keys = list(table.columns)
    units = figures.daily.drop_duplicates("key").set_index("key")["unit"]
    _banner(ws, figures)
    top = _daily_top(figures)
    _row(ws, top, ["Day", *keys], BOLD)
    _row(ws, top + 1, ["unit", *[units[k] for k in keys]], BOLD)
    for i, (day, values) in enumerate(table.iterrows(), start=top + 2):
        _row(ws, i, [day, *[float(v) for v in values]])
    ws.freeze_panes = f"B{top + 2}"


def _records(ws: Worksheet, figures: PeriodFigures, rows: list[dict], known: list[str]) -> None:
    columns = known + sorted({k for r in rows for k in r} - set(known))
    _table(ws, _banner(ws, figures), columns, [[r.get(c) for c in columns] for r in rows])


def build(figures: PeriodFigures) -> Workbook:
    """The workbook of a period, in memory."""
    wb = Workbook()
    _plan(wb.active, figures)
    wb.active.title = "Monitoring plan"
    _report(wb.create_sheet("Monitoring report"), figures)
    _monthly(wb.create_sheet("Monthly"), figures)
    _daily(wb.create_sheet(DAILY), figures)
    _records(wb.create_sheet("QA findings"), figures, figures.findings, FINDING_COLUMNS)
    _records(wb.create_sheet("Adjustments"), figures, figures.adjustments, ADJUSTMENT_COLUMNS)
    for ws in wb.worksheets:
        _fit_columns(ws)
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
