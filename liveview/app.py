"""The live view's server: pages, a JSON API for everything they show, and a stream of
server-sent events fed from MQTT (so live values keep coming while the database is
down). Binds to 127.0.0.1 unless told otherwise; an optional token protects it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from typing import Literal

import swagger_ui_bundle
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from contract import topics, units
from contract.config.site import Mqtt, Site
from contract.mqtt_connection import BrokerConnection
from contract.store import ReadingStore, ReadUnsupported, StoreUnavailable
from liveview import fleet
from liveview.alarms import FROM_BROKER, KINDS, AlarmBook, sequence_conditions
from liveview.device_state import STATES
from liveview.energy import CounterTotals, unflagged
from liveview.limits import MAX_STREAMS, MAX_STREAMS_PER_ADDRESS
from liveview.main_channels import POWER_CHANNEL
from liveview.state import LiveState

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MESSAGES = Path(__file__).parent / "messages"
SWAGGER = Path(swagger_ui_bundle.swagger_ui_path)
#: the languages of the pages, one message catalogue each (liveview/messages/<lang>.json)
LANGUAGES = ("en", "ja")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: longest chart window of ?hours= [h]
MAX_HISTORY_HOURS = 72.0
#: the chart ranges a page offers [h]
RANGES = {"day": 24.0, "week": 168.0, "month": 744.0}
#: points per chart series at most (a month of 10 s readings is thinned to this)
CHART_POINTS = 600
#: what a page may load and run: this server's scripts only (text from gateways is shown in the
#: pages, so an injected script must find nothing to run), inline styles (the charts set them),
#: and no framing by another site
CSP = ("default-src 'self'; script-src 'self'{scripts}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: the addresses of the pages (HTML a browser opens, not the API it then reads)
PAGE = re.compile(r"/(sites/[^/]+|api/docs)?")
#: headers of every answer
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
#: how long stopping the server waits for the responses still open [s]: a page's stream never
#: ends by itself, and uvicorn would wait for it for ever
SHUTDOWN_GRACE_S = 2.0
#: after the store failed, how long it is not asked again: requests say "unavailable" at once [s]
STORE_RETRY_S = 15.0
#: how long a site's energy figures are served as read [s]: every open overview asks for every
#: site's every 5 s, and each read counts a day of each counter's readings (tens of ms of CPU);
#: a reading is in the store only once the collector has written it, so a new one arriving here
#: is no sign that the figures changed
ENERGY_CACHE_S = 10.0


class LiveView:
    #: a connection that brings no message in this long is logged [s]
    silence_warning_s = 60.0

    def __init__(self, sites: list[Site], broker: Mqtt | str, store: ReadingStore, alarms_path: str,
                 ledger=None, token: str | None = None, simulated: bool = False,
                 allowed_hosts: list[str] | None = None, broker_names: dict[str, str] | None = None,
                 max_streams: int = MAX_STREAMS, max_streams_per_address: int = MAX_STREAMS_PER_ADDRESS):
        self.sites = {s.site: s for s in sites}
        self.state = LiveState(sites)
        self.store, self.ledger, self.token = store, ledger, token
        self.totals = CounterTotals(store)
        self.alarms = AlarmBook(alarms_path)
        self.simulated = simulated
        #: Host header names accepted without a token (DNS rebinding): loopback and these
        self.allowed_hosts = {*LOOPBACK_HOSTS, *(h.lower().strip("[]") for h in allowed_hosts or [])}
        self.clients: set[Subscriber] = set()
        self.max_streams, self.max_streams_per_address = max_streams, max_streams_per_address
        self.loop: asyncio.AbstractEventLoop | None = None
        self.broker = BrokerConnection(broker, f"jcm-liveview-{secrets.token_hex(3)}", "live view: broker",
                                       names=broker_names, reconnect_delay=(1, 10), on_connect=self._on_connect,
                                       subscriptions=[(topics.ALL_READINGS, 0), (topics.ALL_STATUS, 1)])
        self.mqtt = self.broker.client
        self.mqtt.on_message = self._on_mqtt
        self._connected_at: float | None = None  # while nothing has arrived on this connection
        self._sequence_findings: dict[str, tuple[float, list]] = {}  # site -> (when read, findings)
        self._store_failed: tuple[float, str] | None = None  # (when, why) the store last failed
        # site -> (when read, the site's local day, figures); one read at a time a site
        self._energy: dict[str, tuple[float, dt.date, dict]] = {}
        self._energy_locks = {s: threading.Lock() for s in self.sites}

    # -- feeds ----------------------------------------------------------------------
    def _on_connect(self, session_present: bool) -> None:
        self._connected_at = time.monotonic()

    def check_silence(self) -> None:
        """Say so when a connection brings nothing at all: every gateway's status is retained,
        so silence means none has ever published, or the ACL hides the topics from us
        (Mosquitto grants the subscription and then delivers nothing)."""
        since = self._connected_at
        if since is not None and time.monotonic() - since > self.silence_warning_s:
            self._connected_at = None  # once per connection
            user = self.broker.settings.username_env
            log.warning("live view: no message from %s in %.0f s since connecting: no gateway has published, or the "
                        "broker's ACL does not let %s read %s", self.broker.url, self.silence_warning_s,
                        f"the user in ${user}" if user else "anonymous clients", f"{topics.ROOT}/#")

    def _on_mqtt(self, client, userdata, msg):
        self._connected_at = None
        topic = msg._topic.decode("utf-8", "replace")  # msg.topic raises on a topic that is not UTF-8
        try:
            event = self.state.on_message(topic, msg.payload)
        except Exception:  # never let paho's thread die
            log.exception("live view: message on %.120r", topic)
            return
        if event is not None:
            self.publish(event)

    def publish(self, event: dict) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._fan_out, event)

    def admit(self, client: Subscriber) -> dict | None:
        """Count ``client`` among the open streams, or say which limit refuses it (JSON of a 503)."""
        if len(self.clients) >= self.max_streams:
            return {"error": f"too many open streams: {self.max_streams} at most (dashboard --max-streams)",
                    "limit": "max_streams", "value": self.max_streams}
        if sum(c.address == client.address for c in self.clients) >= self.max_streams_per_address:
            return {"error": f"too many open streams from {client.address}: {self.max_streams_per_address} at most "
                             "a client address (dashboard --max-streams-per-address)",
                    "limit": "max_streams_per_address", "value": self.max_streams_per_address}
        self.clients.add(client)
        return None

    def _fan_out(self, event: dict) -> None:
        """Offer ``event`` to the streams of its site only (in the event loop): a flood of one
        site's readings must not fill the queues of the pages of the others."""
        for client in list(self.clients):
            if client.site is None or client.site == event.get("site"):
                client.offer(event)

    def from_store(self, read):
        """``read()``, or ``StoreUnavailable`` at once while the store failed less than
        ``STORE_RETRY_S`` ago: a store that does not answer must not hold every request (and
        the live part of every page) for its timeout, each time it is asked."""
        failed = self._store_failed
        if failed and time.monotonic() - failed[0] < STORE_RETRY_S:
            raise StoreUnavailable(f"{failed[1]} (store unavailable: asked again {STORE_RETRY_S:.0f} s after)")
        try:
            return read()
        except ReadUnsupported:  # an answer: this kind of read, not the store, is what fails
            raise
        except StoreUnavailable as exc:
            self._store_failed = (time.monotonic(), str(exc))
            raise

    def energy(self, site: Site, now: dt.datetime) -> dict:
        """Today's and month-to-date counted figures of a site, or ``{"error": ...}``: as read
        less than ``ENERGY_CACHE_S`` ago on the same local day, else read now (requests for the
        site meanwhile wait for that read and take its figures)."""
        day = now.astimezone(site.zone).date()
        with self._energy_locks[site.site]:
            kept = self._energy.get(site.site)
            if kept and kept[1] == day and time.monotonic() - kept[0] < ENERGY_CACHE_S:
                return kept[2]
            at = time.monotonic()
            try:
                figures = self.from_store(lambda: self.totals.figures(site, now))
            except StoreUnavailable as exc:  # not kept: the store is asked again as from_store allows
                return {"error": str(exc)}
            self._energy[site.site] = (at, day, figures)
            return figures

    def month_to_date(self, site: str) -> dict | None:
        try:
            return self.ledger.month_to_date(site) if self.ledger else None
        except Exception:
            return None

    def sequence_findings(self, site: str) -> list:
        """The collector's sequence findings of a site, read at most every 10 s; the last
        ones known while the store is down."""
        at, known = self._sequence_findings.get(site, (0.0, []))
        if time.monotonic() - at >= 10.0:
            try:
                known = self.from_store(lambda: self.store.sequence_findings(site))
            except Exception as exc:  # the page stays live while the store is down
                log.debug("live view: sequence findings of %s unavailable: %s", site, exc)
            self._sequence_findings[site] = (time.monotonic(), known)
        return known

    @property
    def broker_connected(self) -> bool:
        return self.broker.connected.is_set()

    def evaluate_alarms(self, now: dt.datetime | None = None) -> list[dict]:
        now = now or dt.datetime.now(dt.UTC)
        kinds = set(KINDS) if self.broker_connected else set(KINDS) - FROM_BROKER
        changes = []
        for site in self.sites:
            conditions = self.state.conditions(site, now, self.month_to_date(site))
            conditions += sequence_conditions(self.sequence_findings(site), now)
            changes += self.alarms.update((site, kinds), [c for c in conditions if c.kind in kinds], now)
        for c in changes:
            self.publish({"type": "alarm", **c})
        return changes

    async def _alarm_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.evaluate_alarms)
            except Exception:
                log.exception("alarm evaluation failed")
            self.check_silence()
            await asyncio.sleep(1.0)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.broker.start()
        self._alarm_task = asyncio.create_task(self._alarm_loop())

    async def stop(self) -> None:
        self._alarm_task.cancel()
        self.broker.stop()

    # -- data for the API -------------------------------------------------------------
    def site_summary(self, site_id: str, now: dt.datetime | None = None, energy: dict | None = None) -> dict:
        """A site's row of the fleet overview; ``energy``: its figures when already read."""
        site = self.sites[site_id]
        now = now or dt.datetime.now(dt.UTC)
        snap = self.state.snapshot(site_id, now)
        states = [d["state"] for d in snap["devices"]]
        counts = {s: states.count(s) for s in STATES}
        gateway_state = snap["gateways"].get(site.gateway, {}).get("state", "unknown")
        active = len(self.alarms.active(site_id))
        mtd = self.month_to_date(site_id)
        verified, _ = self._months(site_id)
        energy = self.energy(site, now) if energy is None else energy
        main = site.monitoring[0] if site.monitoring else None
        main_key = main and (main.parameter if main.unit_id is None else f"{main.parameter}[{main.unit_id}]")
        return {"site": site_id, "name": site.name, "country": site.country, "timezone": site.timezone,
                "methodology": f"{site.methodology} {site.methodology_version}", "gateway": site.gateway,
                "gateway_state": gateway_state, "devices": counts, "active_alarms": active,
                "attention": fleet.attention(gateway_state, counts, active),
                "power_kw": fleet.power_now_kw(site, snap["devices"]), "capacity_kw": fleet.capacity_kw(site),
                "energy_main": energy.get(main_key) if main_key else None, "energy_main_key": main_key,
                "energy_error": energy.get("error"),
                "month_to_date": _reduction(mtd), "last_verified": verified,
                "simulated": self.simulated, "broker_connected": self.broker_connected}

    def overview(self) -> list[dict]:
        """Every site's row, the one that needs attention most first."""
        rows = [self.site_summary(s) for s in self.sites]
        return sorted(rows, key=lambda r: (fleet.ATTENTION.index(r["attention"]), -r["active_alarms"], r["name"]))

    def site_detail(self, site_id: str) -> dict:
        now = dt.datetime.now(dt.UTC)
        energy = self.energy(self.sites[site_id], now)
        out = {**self.site_summary(site_id, now, energy), **self.state.snapshot(site_id, now)}
        out["alarms"] = {"active": self.alarms.active(site_id), "recent": self.alarms.recent(site_id, 30)}
        out["energy"] = energy
        out["last_verified"], out["months"] = self._months(site_id)
        return out

    def _months(self, site_id: str) -> tuple[dict | None, list[dict]]:
        """The latest revision of each month, with why a month is not verified."""
        if self.ledger is None:
            return None, []
        months = {}
        for rev in self.ledger.revisions(site_id):
            summary = rev.result.get("summary", {})
            findings = [f for f in rev.result.get("findings", []) if f.get("severity") in ("review", "fail")]
            months[rev.month] = {
                "month": rev.month, "revision": rev.revision, "status": rev.status, "ER": rev.ER,
                "ER_unrounded": rev.ER_unrounded, "provisional": rev.provisional,
                "signed_off": self.ledger.signoff(site_id, rev.month) is not None,
                "reasons": summary.get("reasons", []) if rev.status in ("needs_review", "failed") else [],
                "findings": findings if rev.status in ("needs_review", "failed") else [],
                "rounded_to_zero": rev.ER == 0 and bool(rev.ER_unrounded)}
        rows = [months[k] for k in sorted(months)]
        verified = [r for r in rows if r["status"] == "verified"]
        return (verified[-1] if verified else None), rows

    def history(self, site_id: str, hours: float) -> dict:
        """The power channel of each device over the last ``hours``, at most ``CHART_POINTS`` a series."""
        site = self.sites[site_id]
        end = dt.datetime.now(dt.UTC)
        start = end - dt.timedelta(hours=hours)
        series = {}
        for d in site.devices:
            ch = POWER_CHANNEL.get(d.kind)
            if not ch:
                continue
            df = self.from_store(lambda: self.store.read(site_id, start, end, channels=[ch], devices=[d.id]))
            df = df[unflagged(df)]
            if len(df) > CHART_POINTS:  # thin for the browser
                df = df.iloc[:: len(df) // CHART_POINTS + 1]
            unit = site.device(d.id).register_map.point(ch).unit
            scale = _to_kw(unit)  # one unit for every power on the page
            series[d.id] = {"channel": ch, "unit": "kW" if scale else unit, "t": [t.isoformat() for t in df["ts"]],
                            "v": [float(v) * (scale or 1.0) for v in df["value"]]}
        return {"site": site_id, "timezone": site.timezone, "from": start.isoformat(), "to": end.isoformat(),
                "series": series}


def _to_kw(unit: str) -> float | None:
    """The factor from a power ``unit`` to kW; ``None`` for any other unit (flows, fractions)."""
    try:
        return float(units.ratio(unit, "kW"))
    except ValueError:
        return None


def _reduction(mtd: dict | None) -> dict | None:
    """The processor's month-to-date figures as the pages show them: whole tonnes, provisional."""
    if not mtd or mtd.get("ER_unrounded") is None:
        return None
    return {"ER": mtd.get("ER"), "ER_unrounded": mtd["ER_unrounded"], "first": mtd.get("first"),
            "last": mtd.get("last"), "status": mtd.get("status"), "provisional": True,
            "rounded_to_zero": mtd.get("ER") == 0 and bool(mtd["ER_unrounded"])}


class Subscriber:
    """One stream of server-sent events: the site it follows (None: all), the client address
    it serves and its queue.

    A client too slow to keep up misses events rather than growing the queue; it is then
    told so (a ``missed`` event) so that it reads the site afresh instead of showing what
    it last heard as current."""

    def __init__(self, site: str | None, address: str, size: int = 1000):
        self.site, self.address = site, address
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=size)
        self.missed = 0

    def offer(self, event: dict) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.missed += 1

    async def next_event(self, timeout: float) -> dict:
        """The next event: ``missed`` (with how many) first if any were dropped; ``TimeoutError`` after ``timeout``."""
        if self.missed:
            missed, self.missed = self.missed, 0
            return {"type": "missed", "site": self.site, "events": missed}
        return await asyncio.wait_for(self.queue.get(), timeout=timeout)


class EventStream(Response):
    """The answer to a stream request: its events, or a 503 naming the limit it exceeds.

    The slot is taken and given back here, around the whole response, rather than in the
    events' generator: a generator cancelled before its first step (the client gone as the
    answer starts) never runs its ``finally``, and its slot would stay taken for ever."""

    def __init__(self, view: LiveView, client: Subscriber, request: Request):
        super().__init__()
        self.view, self.client, self.request = view, client, request

    async def __call__(self, scope, receive, send) -> None:
        refused = self.view.admit(self.client)
        if refused:
            await JSONResponse(refused, status_code=503, headers={"Retry-After": "30"})(scope, receive, send)
            return
        try:
            await StreamingResponse(self._events(), media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache"})(scope, receive, send)
        finally:
            self.view.clients.discard(self.client)

    async def _events(self):
        yield "retry: 2000\n\n"
        while not await self.request.is_disconnected():
            try:
                event = await self.client.next_event(timeout=15)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield f"event: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n"


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison of bytes: any text a client sends is comparable, none raises."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def request_host(request: Request) -> str:
    """The host name the client asked for (Host header without port or IPv6 brackets), lower case."""
    try:
        return urlsplit("//" + request.headers.get("host", "")).hostname or ""
    except ValueError:  # not a host at all
        return ""


def served_over_https(request: Request) -> bool:
    """Whether the browser talks https to us, directly or to a proxy that says so.

    Believing a forged X-Forwarded-Proto only makes the cookie stricter (Secure)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def without_token(request: Request) -> Response:
    """The answer to a page opened with a valid ``?token=``: the same address without it (the
    cookie set with this answer carries the token), so that the token leaves the address bar, the
    history and any address copied from it. A link followed from another site gets a page that
    goes there by itself instead of a redirect: the browser would not send a SameSite=Strict
    cookie on the redirected request, and the page would be refused."""
    rest = request.url.remove_query_params("token")
    location = rest.path + (f"?{rest.query}" if rest.query else "")
    if request.headers.get("sec-fetch-site") == "cross-site":
        url = html.escape(location.replace("'", "%27"))
        return HTMLResponse(f"<!doctype html><meta http-equiv=\"refresh\" content=\"0; url='{url}'\">")
    return RedirectResponse(location, status_code=303)


def create_app(view: LiveView) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        await view.start()
        yield
        await view.stop()

    # docs_url=None, redoc_url=None: FastAPI's own pages load Swagger UI and ReDoc from CDNs; ours
    # serves Swagger UI from the package
    app = FastAPI(title="jcm live view", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json",
                  lifespan=lifespan)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if not view.token:
            # without a token only this machine's names reach the pages: a site whose DNS
            # name is re-pointed at 127.0.0.1 (DNS rebinding) is refused by its Host header
            host = request_host(request)
            if host not in view.allowed_hosts:
                return JSONResponse({"error": f"host {host!r} is not served here "
                                              "(dashboard --allow-host, or use --token-env)"}, status_code=400)
            return await call_next(request)
        if request.url.path.startswith("/static"):
            return await call_next(request)
        given = (request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                 or request.query_params.get("token") or request.cookies.get("jcm_token"))
        if not given or not token_matches(given, view.token):
            return JSONResponse({"error": "a valid token is required (Authorization: Bearer ... or ?token=)"},
                                status_code=401)
        if request.query_params.get("token") and request.method in ("GET", "HEAD") and PAGE.fullmatch(request.url.path):
            response = without_token(request)  # API and stream clients keep ?token=: they may have no other way
        else:
            response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie("jcm_token", view.token, httponly=True, samesite="strict",
                                secure=served_over_https(request))
        return response

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Content-Security-Policy", CSP.format(scripts=""))
        return response

    def site_or_404(site: str) -> str:
        if site not in view.sites:
            raise HTTPException(404, f"no site '{site}'")
        return site

    # the pages answer HEAD as GET, without the body: monitoring probes ask so
    @app.get("/")
    @app.head("/", include_in_schema=False)
    def deployment_page():
        return FileResponse(STATIC / "deployment.html")

    @app.get("/sites/{site}")
    @app.head("/sites/{site}", include_in_schema=False)
    def site_page(site: str):
        site_or_404(site)
        return FileResponse(STATIC / "site.html")

    def file_in(folder: Path, name: str) -> FileResponse:
        path = (folder / name).resolve()
        if path.parent != folder.resolve() or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path)

    @app.get("/static/{name}")
    def static(name: str):
        return file_in(STATIC, name)

    @app.get("/static/swagger/{name}")
    def swagger_asset(name: str):
        return file_in(SWAGGER, name)

    @app.get("/static/messages/{lang}")
    def messages(lang: str):
        if lang not in LANGUAGES:
            raise HTTPException(404, f"no language '{lang}' (known: {', '.join(LANGUAGES)})")
        return file_in(MESSAGES, f"{lang}.json")

    @app.get("/api/docs", include_in_schema=False)
    @app.head("/api/docs", include_in_schema=False)
    def api_docs():
        page = get_swagger_ui_html(openapi_url="/api/openapi.json", title="jcm live view: API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger/favicon-32x32.png")
        # Swagger UI starts from an inline script: that one alone is allowed, by its hash
        inline = re.findall(r"<script>(.*?)</script>", page.body.decode(), re.DOTALL)
        hashes = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()}'"
                         for js in inline)
        page.headers["Content-Security-Policy"] = CSP.format(scripts=hashes)
        return page

    @app.get("/api/sites")
    def api_sites():
        return {"simulated": view.simulated, "broker_connected": view.broker_connected, "sites": view.overview(),
                "alarm_kinds": KINDS}

    @app.get("/api/sites/{site}")
    def api_site(site: str):
        return view.site_detail(site_or_404(site))

    @app.get("/api/sites/{site}/history")
    def api_history(site: str, hours: float = Query(6.0, gt=0, le=MAX_HISTORY_HOURS, allow_inf_nan=False,
                                                     description="window ending now [h]"),
                    span: Literal["day", "week", "month"] | None = Query(
                        None, alias="range", description="a chart range ending now, instead of hours")):
        try:
            return view.history(site_or_404(site), RANGES[span] if span else hours)
        except StoreUnavailable as exc:
            raise HTTPException(503, f"store unavailable: {exc}") from None

    @app.get("/api/alarms")
    def api_alarms(site: str | None = None, active: bool = False):
        return view.alarms.active(site) if active else view.alarms.recent(site, 200)

    @app.get("/api/stream")
    async def api_stream(request: Request, site: str | None = None):
        client = Subscriber(site if site is None else site_or_404(site), request.client.host if request.client else "")
        return EventStream(view, client, request)

    return app
