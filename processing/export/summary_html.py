"""A one-page human summary of the export: what the period's figures are, how sure
they are, where they came from (with how many of the custody chains are witnessed at
each end of the period, and each chain end that is not), with the charts; the workbook
has the detail. In each language of ``LANGUAGES``, its labels from
``messages/<lang>.json``, each page linking to the other."""

from __future__ import annotations

import datetime as dt
import json
from functools import cache
from html import escape
from pathlib import Path

from contract.text import printable
from processing.export.custody_folder import span
from processing.export.period_figures import PeriodFigures

STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }
.banner { background: #c00000; color: #fff; font-weight: bold; padding: .6em 1em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
"""


#: language -> the summary's file name; English is the first
LANGUAGES = {"en": "summary.html", "ja": "summary.ja.html"}


@cache
def messages(lang: str) -> dict[str, str]:
    """The labels of one language."""
    return json.loads((Path(__file__).parent / "messages" / f"{lang}.json").read_text(encoding="utf-8"))


def _num(value, digits: int = 6) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def figure_text(name: str, value) -> str:
    """How the page shows the period's figure ``name`` [tCO2]: "ER" in whole tonnes, "RE", "PE" and
    "ER_unrounded" to the millionth (``jcm verify`` compares it with its own)."""
    return f"{value:,}" if name == "ER" else _num(value)


def render(figures: PeriodFigures, files: dict[str, str], custody: dict, lang: str = "en") -> str:
    """The page as text.

    Parameters
    ----------
    figures : PeriodFigures
    files : dict
        Names of the export's other files by role: ``workbook``, ``daily_chart``,
        ``completeness_chart``, ``daily_csv``, ``raw_csv``.
    custody : dict
        The manifest's ``custody`` entry (``custody_folder.write_custody``): its signed
        messages (0: the readings were not signed) and their chains' witnesses.
    lang : str
        One of ``LANGUAGES``.
    """
    site, calc, spec = figures.site, figures.calc, figures.spec
    signed = custody["signed_messages"]
    e, m = escape, messages(lang)

    def date(d: dt.date) -> str:
        return m["date"].format(y=d.year, m=d.month, d=d.day)

    def status(s: str) -> str:
        return e(m.get(f"status.{s}", s))

    def link(name: str) -> str:
        return f'<a href="{e(name)}">{e(name)}</a>'

    others = " · ".join(f'<a href="{e(name)}" hreflang="{e(code)}">{e(messages(code)["language"])}</a>'
                        for code, name in LANGUAGES.items() if code != lang)
    parts = ["<!DOCTYPE html>", f'<html lang="{e(lang)}"><head><meta charset="utf-8">',
             f"<title>{e(figures.name)}</title><style>{STYLE}</style></head><body>", f"<p>{others}</p>"]
    if figures.simulated:
        parts.append(f'<p class="banner">{e(m["simulated"])}</p>')
    parts += [
        f"<h1>{e(site.name)}</h1>",
        "<p>" + e(m["project"].format(project=site.jcm_project, country=site.country, methodology=spec.methodology,
                                      version=spec.version, status=spec.status, title=spec.title)) + "</p>",
        "<h2>" + e(m["period"].format(first=date(figures.first), last=date(figures.last),
                                      days=(figures.last - figures.first).days + 1, zone=site.timezone)) + "</h2>",
        "<table>",
        f"<tr><th>{e(m['status'])}</th><td>{status(figures.status)}</td></tr>",
    ]
    if calc is not None:  # else failed, its reasons below say why
        parts += [
            f"<tr><th>{e(m['provisional'])}</th><td>{e(m['yes'] if calc.provisional else m['no'])}</td></tr>",
            *(f"<tr><th>{e(m[name.lower()])}</th><td class=n>{e(figure_text(name, getattr(calc, name)))} tCO2</td></tr>"
              for name in ("RE", "PE", "ER_unrounded")),
            f"<tr><th>{e(m['er_rounded'].format(rounding=spec.rounding))}</th>"
            f"<td class=n><b>{e(figure_text('ER', calc.ER))} tCO2</b></td></tr>"]
    parts += [
        "</table>",
        "<p>" + (e(m["custody"].format(n=f"{signed:,}")) if signed else f"<b>{e(m['not_signed'])}</b>") + "</p>",
    ]
    if "witnesses" in custody:
        parts += _witnesses(custody["witnesses"], site.site, m)
    if figures.config_changes:
        parts.append(f"<h3>{e(m['config_changed'])}</h3><p>{e(m['config_changed_text'])}</p><ul>")
        parts += [f"<li>{e(line)}</li>" for line in figures.config_changes]
        parts.append("</ul>")
    if figures.reasons:
        parts.append(f"<h3>{e(m['why'])}</h3><ul>")
        parts += [f"<li>{e(printable(r))}</li>" for r in figures.reasons]  # they quote the collector's findings
        parts.append("</ul>")
    parts += [f"<h3>{e(m['totals'])}</h3><table><tr><th>{e(m['parameter'])}</th><th>{e(m['total'])}</th>"
              f"<th>{e(m['unit'])}</th></tr>"]
    units = figures.daily.drop_duplicates("key").set_index("key")["unit"]
    parts += [f"<tr><td>{e(k)}</td><td class=n>{e(_num(v))}</td><td>{e(units[k])}</td></tr>"
              for k, v in sorted(figures.parameters.items())]
    parts += ["</table>", f"<h3>{e(m['revisions'])}</h3><table><tr><th>{e(m['month'])}</th><th>{e(m['revision'])}</th>"
              f"<th>{e(m['status'])}</th><th>{e(m['signed_off'])}</th><th>{e(m['input_hash'])}</th>"
              f"<th>{e(m['input_hash_version'])}</th></tr>"]
    for r in figures.revisions:
        signed = e(m["signed_by"].format(by=r.signed_by, at=r.signed_at)) if r.signed_off else e(m["no"])
        parts.append(f"<tr><td>{e(r.month)}</td><td class=n>{e(str(r.revision))}</td><td>{status(r.status)}</td>"
                     f"<td>{signed}</td>"
                     f"<td><code>{e(r.input_hash)}</code></td><td class=n>{e(str(r.input_hash_version))}</td></tr>")
    parts += [
        "</table>",
        "<p>" + e(m["qa"].format(findings=len(figures.findings), adjustments=len(figures.adjustments))) + "</p>",
        # the file names are links: the label is escaped around them
        "<p>" + e(m["files"]).format(workbook=link(files["workbook"]), daily_csv=link(files["daily_csv"]),
                                     raw_csv=link(files["raw_csv"])) + "</p>",
        f'<h3>{e(m["daily"])}</h3><img src="{e(files["daily_chart"])}" alt="{e(m["daily_alt"])}">',
        f'<h3>{e(m["completeness"])}</h3><img src="{e(files["completeness_chart"])}" alt="{e(m["completeness_alt"])}">',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _witnesses(witnesses: dict, site: str, m: dict[str, str]) -> list[str]:
    """The custody section's witness line and, when a chain end is not witnessed, the list of
    them as the manifest has them (``custody.witnesses``), its reasons marked unsigned."""
    chains, listed = witnesses["chains"], witnesses["not_witnessed"]
    heads, tails = (chains - sum(w["end"] == end for w in listed) for end in ("head", "tail"))
    if not listed:
        return ["<p>" + escape(m["witnessed_all"].format(chains=f"{chains:,}")) + "</p>"]
    start, end = (dt.datetime.fromisoformat(witnesses[k]) for k in ("start", "end"))

    def text(value) -> str:  # from the store and the gateways: no markup, nothing reordering the line
        return escape(printable(str(value)))

    parts = ["<p><b>" + escape(m["witnessed_some"].format(heads=f"{heads:,}", tails=f"{tails:,}",
                                                           chains=f"{chains:,}")) + "</b></p>",
             f"<h3>{escape(m['not_witnessed'])}</h3><p>{escape(m['not_witnessed_text'])}</p>",
             "<table><tr>" + "".join(f"<th>{escape(m[k])}</th>" for k in (
                 "nw_end", "nw_chain", "nw_seq", "nw_time", "nw_inside", "nw_why")) + "</tr>"]
    for w in listed:
        ts = dt.datetime.fromisoformat(w["ts"])
        inside = span(ts - start if w["end"] == "head" else end - ts)
        parts.append(f"<tr><td>{escape(m['nw_end.' + w['end']])}</td><td>{text(site)} / {text(w['gateway'])} / "
                     f"<code>{text(w['epoch'])}</code></td><td class=n>{text(w['seq'])}</td><td>{text(w['ts'])}</td>"
                     f"<td>{escape(m['nw_inside.' + w['end']].format(span=inside))}</td><td>{text(w['why'])}</td></tr>")
    parts.append("</table>")
    return parts


def write_summary(figures: PeriodFigures, files: dict[str, str], custody: dict, folder: Path) -> list[Path]:
    """Write the page in every language of ``LANGUAGES`` into ``folder`` (UTF-8, LF);
    ``custody`` as ``render`` takes it."""
    out = []
    for lang, name in LANGUAGES.items():
        path = folder / name
        path.write_bytes(render(figures, files, custody, lang).encode("utf-8"))
        out.append(path)
    return out
