"""The acknowledgement's bitmap (contract/acknowledgement.py) and the collector's compact claim
(collector/claim.py): a claim says what it was told, or less once it has no room, and stays
bounded; what it publishes fits the message, and a gateway or collector from before the bitmap
reads it as no more than the truth; a gateway deletes only rows it has sent that an
acknowledgement, however crafted, claims, at a cost bounded by the message's size."""

import base64
import datetime as dt
import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.acknowledgement import Acknowledgements
from collector.claim import MAX_KEPT_RANGES, WINDOW, Claim, runs_of
from contract.acknowledgement import MAX_ACK_BYTES, MAX_RANGES, Ack, merge
from contract.config import CollectorConfig
from contract.message import EPOCH_PATTERN, MAX_SEQ, Reading
from gateway.outbox import Outbox
from gateway.publisher import Publisher
from tests.conftest import fuzz_examples, load_site, tcp_device, write_site

EPOCH = "0123456789abcdef"


def old_from_json(payload):
    """The schema-1 parser of the gateways in the field before the bitmap (contract/acknowledgement.py
    at that time), kept here as it was: (epoch, ranges), or ValueError."""
    if len(payload) > 16 * 1024:
        raise ValueError("too large")
    body = json.loads(payload)
    if not isinstance(body, dict) or body.get("schema") != 1:
        raise ValueError("not schema 1")
    epoch, ranges = body.get("epoch"), body.get("ranges")
    if not isinstance(epoch, str) or not re.match(EPOCH_PATTERN, epoch):
        raise ValueError("epoch")
    if not isinstance(ranges, list) or len(ranges) > 256:
        raise ValueError("ranges")
    last, out = 0, []
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2 and type(r[0]) is int and type(r[1]) is int
                and last < r[0] <= r[1] <= 2**63 - 1):
            raise ValueError("range")
        last = r[1]
        out.append((r[0], last))
    return epoch, out


def within(runs, truth) -> bool:
    """Whether every seq of ``runs`` is in ``truth`` (ascending, disjoint, not adjacent: merged)."""
    it = iter(truth)
    t = next(it, None)
    for a, b in runs:
        while t is not None and t[1] < a:
            t = next(it, None)
        if t is None or not t[0] <= a <= b <= t[1]:
            return False
    return True


def first_missing(runs, truth) -> int | None:
    """The lowest seq of ``runs`` not in ``truth``."""
    for a, b in runs:
        for t0, t1 in truth:
            if t0 <= a <= t1:
                a = t1 + 1
        if a <= b:
            return a
    return None


def claimed_by(ack: Ack):
    return merge([*ack.ranges, *runs_of(ack.bitmask(), ack.bits_from)])


def check_invariants(c: Claim) -> None:
    assert c.floor <= c.edge and 0 <= c.bits < 1 << WINDOW and not c.bits & 1
    assert len(c.above) <= MAX_KEPT_RANGES and all(a >= c.edge + WINDOW for a, _ in c.above)
    assert c.above == merge(c.above)


# seqs around the places where a claim changes form: the edge, the window's end, far above, MAX_SEQ
def _near(start):
    return st.one_of(st.integers(start, start + 300), st.integers(start + WINDOW - 200, start + WINDOW + 200),
                     st.integers(start, start + 3 * WINDOW), st.integers(start, MAX_SEQ),
                     st.integers(MAX_SEQ - 300, MAX_SEQ)).map(lambda s: min(s, MAX_SEQ))  # a reading's bound


def _ops(start):
    seq = _near(start)
    run = st.tuples(seq, st.integers(0, 500) | st.just(MAX_SEQ)).map(lambda t: (t[0], min(MAX_SEQ, t[0] + t[1])))
    far_apart = st.tuples(seq, st.integers(1, 1500)).map(  # a peer's bitmap with a hole between each seq
        lambda t: (t[0], int("01" * t[1], 2)))
    bits = st.tuples(seq, st.integers(1, 2**400)) | far_apart
    return st.lists(st.one_of(
        st.tuples(st.just("seqs"), st.lists(seq, max_size=200)),
        st.tuples(st.just("ranges"), st.lists(run, max_size=12)),
        st.tuples(st.just("bits"), bits.filter(lambda t: t[0] + t[1].bit_length() - 1 <= MAX_SEQ)),
        st.tuples(st.just("prune"), seq)), max_size=14)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([1, 10**6, MAX_SEQ - 2 * WINDOW]).flatmap(lambda s: st.tuples(st.just(s), _ops(s))))
def test_a_claim_says_what_it_was_told_or_less_once_full_and_so_does_its_acknowledgement(case):
    start, ops = case
    c, truth, floor, forgot = Claim(start), [], start, False
    for op, arg in ops:
        if op == "seqs":
            c.add_seqs(arg)
            new = [(s, s) for s in arg]
        elif op == "ranges":
            c.add_ranges(arg)
            new = list(arg)
        elif op == "bits":
            c.add_bits(*arg)
            new = list(runs_of(arg[1], arg[0]))
        else:
            c.prune(arg)
            floor, new = arg, []  # a lower floor: an outbox gone back, which holds those rows again
        truth = [(max(a, floor), b) for a, b in merge([*truth, *new]) if b >= floor]
        forgot |= c.full is not None
        check_invariants(c)
        held = list(c.runs())
        assert within(held, truth)
        if not forgot:
            assert held == truth
        text = c.ack(EPOCH).to_json()
        assert len(text) <= MAX_ACK_BYTES
        epoch, old = old_from_json(text)  # a gateway from before the bitmap takes it, as a part of the truth
        assert epoch == EPOCH and within(old, held)
        ack = Ack.from_json(text)
        claimed = claimed_by(ack)
        assert within(claimed, held) and list(ack.ranges) == held[:MAX_RANGES]
        # it carries the claim's window whole, but for a top the message has no room for
        top = c.edge + WINDOW - 1
        lost = first_missing([(a, min(b, top)) for a, b in held if a <= top], claimed)
        if lost is not None:
            room = MAX_ACK_BYTES - len(Ack(EPOCH, ack.ranges).to_json()) - len(f',"bits_from":{ack.bits_from},"bits":""')
            assert ack.bits and lost >= ack.bits_from + 8 * (room // 4 * 3)


def test_a_claim_of_every_other_seq_is_carried_whole_by_one_acknowledgement():
    """Two collectors' stores of a fast shared drain: 40,000 seqs, every other one. Both claims go
    out whole, and each collector, folding the other's in, holds one range."""
    a, b = Claim(), Claim()
    a.add_seqs(range(1, 40_001, 2))
    b.add_seqs(range(2, 40_001, 2))
    published = {c: c.ack(EPOCH).to_json() for c in (a, b)}
    assert all(len(text) <= MAX_ACK_BYTES for text in published.values())
    for mine, theirs in ((a, b), (b, a)):
        ack = Ack.from_json(published[theirs])
        assert len(ack.ranges) == MAX_RANGES and ack.bits
        mine.add_ranges(ack.ranges)
        mine.add_bits(ack.bits_from, ack.bitmask())
        assert list(mine.runs()) == [(1, 40_000)] and not mine.bits
        assert Ack.from_json(mine.ack(EPOCH).to_json()) == Ack(EPOCH, ((1, 40_000),))  # the old form, unchanged


def test_a_claim_stays_bounded_against_scattered_seqs_and_moves_its_window_with_the_floor():
    c = Claim()
    c.add_seqs(range(10**12, 10**12 + 10 * MAX_KEPT_RANGES, 2))  # far above the window: ranges, capped
    assert len(c.above) == MAX_KEPT_RANGES and c.full == 10**12 + 2 * (MAX_KEPT_RANGES - 1)
    c.add_ranges([(1, MAX_SEQ)])  # a peer's claim of everything: one range, not a bit per seq
    assert list(c.runs()) == [(1, MAX_SEQ)] and c.bits == 0 and not c.above and c.full is None
    c = Claim()
    c.add_seqs([*range(1, 50), *range(60, 70, 2), 5 * WINDOW, 5 * WINDOW + 2])
    assert list(c.runs())[0] == (1, 49) and c.edge == 50 and c.above == [(5 * WINDOW, 5 * WINDOW),
                                                                         (5 * WINDOW + 2, 5 * WINDOW + 2)]
    c.prune(5 * WINDOW - 10)  # the gateway confirmed all below: the window starts there
    assert c.edge == 5 * WINDOW - 10 and not c.above and list(c.runs()) == [(5 * WINDOW, 5 * WINDOW),
                                                                             (5 * WINDOW + 2, 5 * WINDOW + 2)]


def test_a_floor_gone_down_claims_again_the_rows_the_gateway_sends_again():
    """An outbox restored from an older copy holds again rows below the floor a collector had heard
    (the gateway's floor goes down): the collector stores them again and must claim them, or the
    gateway sends them for ever (the floor never went down: they were taken as held already)."""
    c = Claim()
    c.add_ranges([(1, 1000)])
    c.prune(1001)  # the gateway confirmed them all
    c.add_seqs([1001, 1002, 1005])
    c.prune(400)  # its outbox went back: rows 400.. are in it again
    assert list(c.runs()) == [(1001, 1002), (1005, 1005)]  # what is known held is kept
    c.add_seqs(range(400, 1001))  # sent again, stored again
    assert list(c.runs()) == [(400, 1002), (1005, 1005)] and c.edge == 1003
    assert claimed_by(Ack.from_json(c.ack(EPOCH).to_json())) == [(400, 1002), (1005, 1005)]
    c.prune(1003)
    assert list(c.runs()) == [(1005, 1005)] and c.floor == 1003
    check_invariants(c)


def test_a_floor_going_down_and_up_costs_no_pass_over_the_window(monkeypatch):
    """A gateway's floor that goes down and up (buggy, hostile) costs each status a few shifts and at
    most the ranges kept, not a range per run of the window: every other seq held made 49,152 runs,
    read at each fall of the floor (18 ms of the collector's CPU a status, under its lock)."""
    from collector import claim as claim_module

    c = Claim(1000)
    c.add_seqs(range(1001, 1000 + WINDOW, 2))
    c.add_ranges([(10**9, 10**9 + 5)])
    expected = [*((s, s) for s in range(1001, 1000 + WINDOW, 2)), (10**9, 10**9 + 5)]
    read, real = 0, claim_module.runs_of

    def counted(mask, base):
        nonlocal read
        for run in real(mask, base):
            read += 1
            yield run

    monkeypatch.setattr(claim_module, "runs_of", counted)
    for floor in (1, 1000, 1, 1000, 500, 1000):
        c.prune(floor)
    assert read <= 3 * MAX_KEPT_RANGES
    monkeypatch.undo()
    assert list(c.runs()) == expected
    check_invariants(c)


BAD_BITMAPS = [
    ({"bits": "AQ=="}, "come together"),  # no bits_from
    ({"bits_from": 5}, "come together"),
    ({"bits_from": 0, "bits": "AQ=="}, "come together"),
    ({"bits_from": True, "bits": "AQ=="}, "come together"),
    ({"bits_from": 5.0, "bits": "AQ=="}, "come together"),
    ({"bits_from": 2**63, "bits": "AQ=="}, "come together"),
    ({"bits_from": 5, "bits": ["AQ=="]}, "come together"),
    ({"bits_from": 5, "bits": "AQ"}, "not base64"),  # padding missing
    ({"bits_from": 5, "bits": "A Q=="}, "not base64"),
    ({"bits_from": 5, "bits": "AQ==\n"}, "not base64"),
    ({"bits_from": 5, "bits": "é"}, "not base64"),
    ({"bits_from": MAX_SEQ - 6, "bits": "gA=="}, "beyond"),  # bit 7: MAX_SEQ + 1
]


@pytest.mark.parametrize("members, why", BAD_BITMAPS)
def test_a_malformed_bitmap_is_refused_with_one_reason(members, why):
    body = json.dumps({"schema": 1, "epoch": EPOCH, "ranges": [[1, 3]], **members})
    with pytest.raises(ValueError, match=why):
        Ack.from_json(body)


def test_bits_up_to_max_seq_are_taken():
    ack = Ack.from_json(json.dumps({"schema": 1, "epoch": EPOCH, "ranges": [], "bits_from": MAX_SEQ - 7,
                                    "bits": "gA=="}))
    assert ack.spans() == [(MAX_SEQ, MAX_SEQ)] and ack.holds(MAX_SEQ) and not ack.holds(MAX_SEQ - 1)


# -- the gateway: what a crafted acknowledgement can make it delete, and what it costs ---------------

SENT, POLLED = 200, 300  # rows sent so far, rows in the outbox


@pytest.fixture
def gateway(tmp_path):
    site = load_site(write_site(tmp_path, [tcp_device("m0", "power_meter_3ph", 1)],
                                outbox={"path": str(tmp_path / "o.sqlite")}))
    made = []

    def make():
        for old in made:  # one example's outbox at a time: each has its committer thread
            old.close()
        made.clear()
        path = tmp_path / "outbox.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        outbox = Outbox(path, 10_000, durable=False)
        for _ in range(POLLED):
            outbox.put("jcm/v1/test-site/gw-test/m0/reading", str)
        outbox.flush()
        pub = Publisher(site, outbox, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
        pub._live_cursor = SENT
        made.append(outbox)
        return pub
    yield make
    for outbox in made:
        outbox.close()


def take(pub, payload) -> set[int]:
    """Hand ``payload`` to the gateway as an acknowledgement; the rows it deleted."""
    before = {s for s, _, _ in pub.outbox.after(0, POLLED)}
    pub._store_acks.put((b"jcm/v1/test-site/gw-test/ack/c", payload, False))
    pub._take_store_acks()
    return before - {s for s, _, _ in pub.outbox.after(0, POLLED)}


def claims(body: dict) -> set[int]:
    """The seqs 1..POLLED a (well-formed) acknowledgement claims, read bit by bit."""
    out = {s for a, b in body.get("ranges", []) for s in range(a, min(b, POLLED) + 1)}
    if "bits" in body:
        raw = base64.b64decode(body["bits"])
        out |= {body["bits_from"] + i for i in range(8 * len(raw)) if raw[i // 8] >> (i % 8) & 1}
    return {s for s in out if s <= POLLED}


def _hostile_body():
    seq = st.one_of(st.integers(1, POLLED + 50), st.integers(MAX_SEQ - 100, MAX_SEQ), st.integers(1, MAX_SEQ))
    ranges = st.lists(st.tuples(seq, st.integers(0, 40)), max_size=8).map(
        lambda rs: [list(r) for r in merge((a, min(MAX_SEQ, a + n)) for a, n in rs)])
    bits = st.one_of(st.binary(max_size=60), st.binary(min_size=5000, max_size=12_000),
                     st.just(b"\xff" * 12_000)).map(lambda b: base64.b64encode(b).decode())
    bits = bits | st.text(max_size=20)  # malformed too
    bitmap = st.one_of(st.just({}), st.fixed_dictionaries({"bits_from": seq | st.integers(-5, 0), "bits": bits}))
    epoch = st.sampled_from(["own", "fedcba9876543210"])
    return st.tuples(epoch, ranges, bitmap)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(40), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_hostile_body(), min_size=1, max_size=4))
def test_a_gateway_deletes_only_sent_rows_a_crafted_acknowledgement_claims_at_a_bounded_cost(gateway, bodies):
    pub = gateway()
    for epoch, ranges, bitmap in bodies:
        body = {"schema": 1, "epoch": pub.outbox.epoch if epoch == "own" else epoch, "ranges": ranges, **bitmap}
        payload = json.dumps(body).encode()
        try:
            Ack.from_json(payload)
            valid = epoch == "own"
        except ValueError:
            valid = False
        t0 = time.process_time()
        deleted = take(pub, payload)
        assert time.process_time() - t0 < 0.5  # a full bitmap near MAX_SEQ costs what a small one does
        assert all(s <= SENT for s in deleted)  # never a row not sent yet
        expected = {s for s in claims(body) if s <= SENT} if valid else set()
        still = {s for s, _, _ in pub.outbox.after(0, POLLED)}
        assert deleted <= expected and not expected & still


def test_a_gateway_takes_an_old_form_and_a_bitmap_acknowledgement(gateway):
    pub = gateway()
    epoch = pub.outbox.epoch
    assert take(pub, json.dumps({"schema": 1, "epoch": epoch, "ranges": [[1, 3], [5, 5]]})) == {1, 2, 3, 5}
    bits = base64.b64encode(bytes([0b101])).decode()  # 10 and 12
    assert take(pub, json.dumps({"schema": 1, "epoch": epoch, "ranges": [[7, 7]], "bits_from": 10,
                                 "bits": bits})) == {7, 10, 12}
    everything = base64.b64encode(b"\xff" * 100).decode()  # 1..800: only the sent rows go
    assert take(pub, json.dumps({"schema": 1, "epoch": epoch, "ranges": [], "bits_from": 1,
                                 "bits": everything})) == set(range(1, SENT + 1)) - {1, 2, 3, 5, 7, 10, 12}


def test_the_largest_acknowledgement_costs_the_gateway_a_bounded_number_of_lookups(gateway, monkeypatch):
    """256 ranges and a full bitmap, near MAX_SEQ or over the outbox: at most 257 queries, and one
    look-up per row found, whatever the numbers in it."""
    calls = []
    holds = Ack.holds
    monkeypatch.setattr(Ack, "holds", lambda self, seq: calls.append(seq) or holds(self, seq))
    far = [[MAX_SEQ - 3 * WINDOW + 3 * i, MAX_SEQ - 3 * WINDOW + 3 * i] for i in range(MAX_RANGES - 1)]
    for bits_from in (1, MAX_SEQ - 2 * WINDOW):
        pub = gateway()
        body = {"schema": 1, "epoch": pub.outbox.epoch, "ranges": [[1, 1], *far], "bits_from": bits_from, "bits": ""}
        room = MAX_ACK_BYTES - len(json.dumps(body, separators=(",", ":")))
        body["bits"] = base64.b64encode(b"\x55" * (room // 4 * 3)).decode()  # every other seq, as many as fit
        payload = json.dumps(body, separators=(",", ":"))
        assert len(payload) <= MAX_ACK_BYTES
        assert len(Ack.from_json(payload).spans()) <= MAX_RANGES + 1
        calls.clear()
        t0 = time.process_time()
        deleted = take(pub, payload)
        assert time.process_time() - t0 < 0.5 and len(calls) <= POLLED
        assert deleted == ({1} | set(range(1, SENT + 1, 2)) if bits_from == 1 else {1})


# -- the collector: its claims under stores, peers' acknowledgements, floors and epoch changes --------

EPOCHS = ["0000000000000001", "0000000000000002", "0000000000000003"]
READING_TOPIC = "jcm/v1/test-site/gw-test/m0/reading"


def _events():
    seq = st.one_of(st.integers(1, 400), st.integers(WINDOW - 50, WINDOW + 450), st.integers(MAX_SEQ - 50, MAX_SEQ))
    epoch = st.sampled_from(EPOCHS)
    stored = st.tuples(st.just("stored"), epoch, st.lists(seq, max_size=60), st.booleans())
    run = st.tuples(seq, st.integers(0, 300)).map(lambda t: (t[0], min(MAX_SEQ, t[0] + t[1])))
    bits = st.tuples(seq, st.integers(1, 2**700)).filter(lambda t: t[0] + t[1].bit_length() - 1 <= MAX_SEQ)
    peer = st.tuples(st.just("peer"), epoch, st.lists(run, max_size=6).map(merge), bits | st.none())
    status = st.tuples(st.just("status"), epoch, seq, st.none())
    return st.lists(st.one_of(stored, peer, status), max_size=25)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(_events())
def test_a_collector_publishes_only_what_its_store_or_a_peer_holds_of_the_gateways_epoch(events):
    """Against a set model: every acknowledgement a collector publishes claims, of its epoch, only
    seqs its store took (readings or dead letters) or a peer claimed of that same epoch; once the
    gateway's status names an epoch, it publishes that epoch only, and what it claimed of it is never
    taken back above the floor unless it ran out of room."""
    acks = Acknowledgements(CollectorConfig(broker={"url": "mqtt://127.0.0.1:1"}), [("test-site", "gw-test")])
    published = []
    acks._publish = lambda key, ack: published.append(ack)  # never connected: record instead
    told: dict[str, list] = {e: [] for e in EPOCHS}  # per epoch: the runs the store or a peer holds
    current = floor = None
    last: dict[str, list] = {}
    for kind, epoch, arg, extra in events:
        published.clear()
        if kind == "stored":
            readings = [Reading("test-site", "gw-test", "m0", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), {"x": 1.0},
                                seq=s, epoch=epoch) for s in arg[: len(arg) // 2 if extra else len(arg)]]
            letters = [(READING_TOPIC, json.dumps({"epoch": epoch, "seq": s}).encode())
                       for s in arg[len(arg) // 2:]] if extra else []
            acks.kept(readings, letters)
            told[epoch] = merge([*told[epoch], *((s, s) for s in arg)])
        elif kind == "peer":
            body = {"schema": 1, "epoch": epoch, "ranges": [list(r) for r in arg[:MAX_RANGES]]}
            if extra:
                body |= {"bits_from": extra[0], "bits": base64.b64encode(
                    extra[1].to_bytes((extra[1].bit_length() + 7) // 8, "little")).decode()}
            msg = type("M", (), {"_topic": b"jcm/v1/test-site/gw-test/ack/peer", "payload": json.dumps(body).encode()})
            acks._on_message(None, None, msg)
            told[epoch] = merge([*told[epoch], *arg[:MAX_RANGES], *(runs_of(extra[1], extra[0]) if extra else ())])
        else:
            msg = type("M", (), {"_topic": b"jcm/v1/test-site/gw-test/status",
                                 "payload": json.dumps({"epoch": epoch, "floor": arg}).encode()})
            acks._on_message(None, None, msg)
            if epoch != current:
                last = {}
            current, floor = epoch, arg if epoch != current else max(floor, arg)
        g = acks._gateways[("test-site", "gw-test")]
        for ack in published:
            claimed = claimed_by(ack)
            assert within(claimed, told[ack.epoch]), (ack, told[ack.epoch])
            if current is not None:
                assert ack.epoch == current
                full = any(c.full is not None for c in g.epochs.values())
                before = [(max(a, floor), b) for a, b in last.get(current, []) if b >= floor]
                if not full and len(ack.ranges) < MAX_RANGES and not ack.bits:
                    assert within(before, claimed)  # nothing it said the store held is taken back
                last[current] = claimed



def test_acknowledgements_queued_meanwhile_cost_the_gateway_one_look_up_each_collector(tmp_path):
    """A bitmap's unset bits leave their rows in the outbox, so each acknowledgement with one looks them
    up again: a collector publishing after every batch, or anyone publishing on its topic, would keep the
    gateway's loop (and the outbox lock its commits wait for) busy, and the queue growing. Each
    acknowledgement is its collector's whole claim: of those queued meanwhile, the latest of each is taken."""
    outbox = Outbox(tmp_path / "o.sqlite", 100_000, durable=False)
    try:
        for _ in range(20_000):
            outbox.put("jcm/v1/test-site/gw-test/m0/reading", str)
        outbox.flush()
        site = load_site(write_site(tmp_path, [tcp_device("m0", "power_meter_3ph", 1)]))
        pub = Publisher(site, outbox, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
        pub._live_cursor = 20_000
        sparse = base64.b64encode(b"\x01" + bytes(2_498) + b"\x80").decode()  # seqs 1 and 20,000 of 20,000

        def queue(n, last_bits=sparse):
            for i in range(n):
                body = {"schema": 1, "epoch": outbox.epoch, "ranges": [], "bits_from": 1,
                        "bits": last_bits if i == n - 1 else sparse}
                pub._store_acks.put((b"jcm/v1/test-site/gw-test/ack/c1", json.dumps(body).encode(), False))
            t0 = time.process_time()
            pub._take_store_acks()
            return time.process_time() - t0

        one = min(queue(1) for _ in range(3))
        assert queue(60) < 10 * one + 0.05
        # the latest claim is the one taken: seq 3 besides 1 and 20,000
        queue(5, base64.b64encode(b"\x05" + bytes(2_498) + b"\x80").decode())
        assert [s for s, _, _ in outbox.after(0, 3)] == [2, 4, 5]
    finally:
        outbox.close()
