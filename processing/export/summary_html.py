"""A one-page human summary of the export: what the period's figures are, how sure
they are, where they came from, with the charts; the workbook has the detail."""

from __future__ import annotations

from html import escape
from pathlib import Path

from processing.export.period_figures import PeriodFigures

STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }
.banner { background: #c00000; color: #fff; font-weight: bold; padding: .6em 1em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
"""


def _num(value, digits: int = 6) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def render(figures: PeriodFigures, files: dict[str, str]) -> str:
    """The page as text.

    Parameters
    ----------
    figures : PeriodFigures
    files : dict
        Names of the export's other files by role: ``workbook``, ``daily_chart``,
        ``completeness_chart``, ``daily_csv``, ``raw_csv``.
    """
    site, calc, spec = figures.site, figures.calc, figures.spec
    e = escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(figures.name)}</title><style>{STYLE}</style></head><body>"]
    if figures.simulated:
        parts.append('<p class="banner">SIMULATED DATA: the readings of this period come from the simulator, '
                     "not from the plant's meters. Not for verification or issuance.</p>")
    parts += [
        f"<h1>{e(site.name)}</h1>",
        f"<p>{e(site.jcm_project)}, {e(site.country)}. Methodology {e(spec.methodology)} Ver{e(spec.version)} "
        f"({e(spec.status)}): {e(spec.title)}.</p>",
        f"<h2>Monitoring period {figures.first} to {figures.last} "
        f"({(figures.last - figures.first).days + 1} days, local time {e(site.timezone)})</h2>",
        "<table>",
        f"<tr><th>Status</th><td>{e(figures.status)}</td></tr>",
        f"<tr><th>Provisional</th><td>{'yes' if calc.provisional else 'no'}</td></tr>",
        f"<tr><th>Reference emissions RE</th><td class=n>{_num(calc.RE)} tCO2</td></tr>",
        f"<tr><th>Project emissions PE</th><td class=n>{_num(calc.PE)} tCO2</td></tr>",
        f"<tr><th>ER = RE &minus; PE (unrounded)</th><td class=n>{_num(calc.ER_unrounded)} tCO2</td></tr>",
        f"<tr><th>ER of the period, rounded {e(spec.rounding)} once</th>"
        f"<td class=n><b>{calc.ER:,} tCO2</b></td></tr>",
        "</table>",
    ]
    if figures.config_changes:
        parts.append("<h3>Configuration changed since the revisions used</h3><p>The figures above are computed "
                     "with the values the ledger revisions recorded, not with today's configuration:</p><ul>")
        parts += [f"<li>{e(line)}</li>" for line in figures.config_changes]
        parts.append("</ul>")
    if figures.reasons:
        parts.append("<h3>Why this status</h3><ul>")
        parts += [f"<li>{e(r)}</li>" for r in figures.reasons]
        parts.append("</ul>")
    parts += ["<h3>Period totals of the monitored parameters</h3><table><tr><th>Parameter</th><th>Total</th>"
              "<th>Unit</th></tr>"]
    units = figures.daily.drop_duplicates("key").set_index("key")["unit"]
    parts += [f"<tr><td>{e(k)}</td><td class=n>{_num(v)}</td><td>{e(units[k])}</td></tr>"
              for k, v in sorted(figures.parameters.items())]
    parts += ["</table>", "<h3>Ledger revisions used</h3><table><tr><th>Month</th><th>Revision</th><th>Status</th>"
              "<th>Signed off</th><th>Input hash</th></tr>"]
    for r in figures.revisions:
        signed = f"by {e(r.signed_by)} at {e(r.signed_at)}" if r.signed_off else "no"
        parts.append(f"<tr><td>{e(r.month)}</td><td class=n>{r.revision}</td><td>{e(r.status)}</td><td>{signed}</td>"
                     f"<td><code>{e(r.input_hash)}</code></td></tr>")
    parts += [
        "</table>",
        f"<p>QA findings: {len(figures.findings)}; adjustments: {len(figures.adjustments)} "
        "(over the whole months of the revisions used; listed in the workbook).</p>",
        f"<p>Files: <a href=\"{e(files['workbook'])}\">{e(files['workbook'])}</a> (monitoring plan, report with live "
        f"formulas, monthly, daily, QA findings, adjustments), <a href=\"{e(files['daily_csv'])}\">"
        f"{e(files['daily_csv'])}</a>, <a href=\"{e(files['raw_csv'])}\">{e(files['raw_csv'])}</a>; "
        "manifest.json holds every file's SHA-256.</p>",
        f'<h3>Daily values</h3><img src="{e(files["daily_chart"])}" alt="daily values of the monitored parameters">',
        f'<h3>Completeness</h3><img src="{e(files["completeness_chart"])}" '
        'alt="completeness per source channel and month">',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_summary(figures: PeriodFigures, files: dict[str, str], path: Path) -> Path:
    """Write ``render(figures, files)`` to ``path`` (UTF-8, LF)."""
    path.write_bytes(render(figures, files).encode("utf-8"))
    return path
