"""Signed backlog batches over a thin link: a batch leaves out the ``prev`` hashes and the
signatures its chain covers (contract/batch.py, contract/custody.py); the subscriber
rebuilds each message's signed bytes byte for byte and refuses what does not hold
together, naming why; an export of what was stored so verifies."""

from __future__ import annotations

import dataclasses
import hashlib
import datetime as dt
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from bench.thin_link import batches_of, day_of_readings, publish_bytes, signed_chain
from bench.acknowledgement import MN_SOLAR
from contract import batch, custody, topics
from contract.config import load_site
from contract.custody import GENESIS, chain_hash, open_batch, signed_bytes, verify, verify_chained
from contract.store import SignedMessage
from processing.export.custody_folder import with_covering
from store import open_store
from store.sqlite_store import SqliteStore
from tests.test_collector_custody import E1, E2, K1, K2, KO, REVOKED, ROTATED, T0, chain, reading, run, signed, sites
from tests.test_custody import public_key
from tests.conftest import fuzz_examples

#: the thin link's budget: a day of mn-solar (77,760 readings) in 60 s at 1 Mbit/s [bytes/reading]
BUDGET = 1_000_000 / 8 * 60 / 77_760


def keys():
    """The keys of tests.test_collector_custody's site file, as its collector reads them."""
    return {"test-site": [public_key(K1, "k1", valid_from=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), valid_to=ROTATED),
                          public_key(K2, "k2", valid_from=ROTATED, revoked=REVOKED)]}


def messages(seqs, **kw) -> list[bytes]:
    return [m for _, m in chain(seqs, **kw).values()]


def lines(messages_: list[bytes]) -> list[bytes]:
    payload, n = batch.pack(messages_)
    assert n == len(messages_)
    return batch.unpack(payload)


def test_a_signed_backlog_goes_within_the_thin_link_budget():
    """An hour of mn-solar signed in one chain, as the gateway's backlog batches carry it:
    within the budget (the day's first hour, in daylight, is among its dearest: 94.6 bytes a
    reading unsigned against 70.1 for the whole day), and at most 3 % above the same
    readings unsigned (each line carrying its prev and signature: 224 bytes a reading)."""
    site = load_site(MN_SOLAR)
    unsigned = [dataclasses.replace(r, seq=i, epoch=E1).to_json().encode()
                for i, r in enumerate(day_of_readings(site, 3600), 1)]
    topic = topics.batch(site.site, site.gateway)
    per_reading = [sum(publish_bytes(topic, p) for p in batches_of(m)) / len(m)
                   for m in (unsigned, signed_chain(unsigned, K1))]
    assert per_reading[1] <= BUDGET and per_reading[1] <= 1.03 * per_reading[0], per_reading


def test_a_batch_rebuilds_each_message_byte_for_byte_and_only_the_last_keeps_its_signature():
    sent = messages(range(1, 41))
    got = lines(sent)
    assert got[0].endswith(b'"key":"k1"}') and b'"prev":"' + GENESIS.encode() in got[0]
    assert all(b'"prev":"","key":"k1"}' in line and not line.endswith(b'=="}') for line in got[1:-1])
    assert got[-1].endswith(b'=="}') and b'"prev":"","key":"k1","sig":"' in got[-1]
    opened = open_batch(got, keys())
    assert [m for m, _ in opened] == [signed_bytes(m) for m in sent[:-1]] + [sent[-1]]
    assert all(v.ok for _, v in opened)
    assert [v.hash for _, v in opened] == [chain_hash(m) for m in sent]
    # a batch cut by the packet limit ends with its signature too
    payload, n = batch.pack(sent, 600)
    assert 1 < n < len(sent) and len(payload) <= 600
    assert open_batch(batch.unpack(payload), keys())[-1][0] == sent[n - 1]


def test_unsigned_lines_and_a_gap_in_the_chain_end_a_run_with_its_signature():
    unsigned = reading(50, ts=T0).to_json().encode()
    first, second = messages(range(1, 6)), messages(range(8, 12))[-3:]  # 9..11: 6..8 never sent
    got = lines(first + [unsigned] + second)
    assert got[5] == unsigned and b'"prev":""' not in got[6]  # after a line it does not follow, prev is written
    opened = open_batch(got, keys())
    assert [m for m, _ in opened] == ([signed_bytes(m) for m in first[:4]] + [first[4], unsigned]
                                      + [signed_bytes(m) for m in second[:2]] + [second[2]])
    assert [v and v.ok for _, v in opened] == [True] * 5 + [None] + [True] * 3


def tampered(got: list[bytes], i: int) -> list[bytes]:
    got = list(got)
    got[i] = got[i].replace(b'"energy_import":100', b'"energy_import":900', 1)
    return got


@pytest.mark.parametrize("change, refused", [
    (lambda got: got[:3] + got[4:], 'line 4: "prev" left out, but line 3 is not seq 4 of test-site/gw-test/'),
    (lambda got: got[:3] + [got[4], got[3]] + got[5:], 'line 4: "prev" left out, but line 3 is not seq 4 of'),
    (lambda got: got[:-1], "line 1: not covered: seq 9 of test-site/gw-test/00000000000000e1 has no signature "
                           "and nothing after it"),
    (lambda got: got[:4] + [got[4].replace(b'"prev":""', b'"prev":"' + b"ab" * 32 + b'"')] + got[5:],
     "line 1: not covered: seq 4 of test-site/gw-test/00000000000000e1 has no signature and the message after it "
     "is not seq 5 of its chain carrying its hash"),
    (lambda got: [lines(messages([1, 2, 3], epoch=E2))[0]] + got[1:],
     'line 2: "prev" left out, but line 1 is not seq 1 of test-site/gw-test/00000000000000e1'),
    (lambda got: [got[0], signed_bytes(messages([2], epoch=E2)[0]), messages([2])[0]],
     "line 1: not covered: seq 1 of test-site/gw-test/00000000000000e1 has no signature and the message after it "
     "is not seq 2"),
    (lambda got: [signed_bytes(signed(reading(1, site="other-site", gateway="gw-other"), GENESIS, "ko", KO)[1]),
                  *got[1:]], 'line 2: "prev" left out, but line 1 is not seq 1 of test-site/gw-test/'),
    (lambda got: [b"{}"] + got[1:], 'line 2: "prev" left out, but line 1 is not a signed message'),
    (lambda got: [got[1]] + got[2:], 'line 1: "prev" left out, but it is the first line'),
])
def test_a_batch_that_does_not_hold_together_is_refused_whole_naming_why(change, refused):
    with pytest.raises(ValueError, match="^" + refused.replace("(", r"\(").replace(")", r"\)")):
        open_batch(change(lines(messages(range(1, 11)))), keys())


def test_a_covered_line_altered_or_a_key_out_of_its_rules_is_refused_with_the_reason():
    got = lines(messages(range(1, 11)))
    # a value changed on a covered line: every hash after it changes, the signature fails
    opened = open_batch(tampered(got, 3), keys())
    assert {v.reason for _, v in opened[:-1]} == {"covered by seq 10, refused: bad signature (key 'k1')"}
    assert opened[-1][1] is None and verify(opened[-1][0], keys()).kind == "bad_signature"  # checked as sent alone
    # a covered message stamped outside its key's validity, the rest within it
    sent, prev = [], GENESIS
    for seq in range(1, 6):
        sent.append(signed(reading(seq, ts=ROTATED + dt.timedelta(hours=1) if seq == 3 else None), prev)[1])
        prev = chain_hash(sent[-1])
    late = open_batch(lines(sent), keys())
    assert [v.kind for _, v in late] == [None, None, "key_not_valid", None, None]
    # the covering message's key revoked by its stamp: what it covers is refused with it
    revoked = open_batch(lines(messages(range(1, 4), key_id="k2", key=K2, ts=REVOKED - dt.timedelta(seconds=2))),
                         keys())
    assert [v.kind for _, v in revoked[:-1]] == ["key_revoked"] * 2
    assert revoked[0][1].reason.startswith("covered by seq 3, refused: key 'k2' revoked at")
    assert revoked[1][1].reason.startswith("key 'k2' revoked at")
    assert revoked[-1][1] is None and verify(revoked[-1][0], keys()).kind == "key_revoked"


def test_a_covered_message_verifies_only_linked_to_a_signature():
    sent = messages(range(1, 7))
    kept = [signed_bytes(m) for m in sent[:3]] + [sent[3], signed_bytes(sent[4]), sent[5]]
    assert all(v.ok for _, v in verify_chained(kept, keys()))
    assert [v.kind for _, v in verify_chained(kept[:3], keys())] == ["not_covered"] * 3
    assert [v.kind for _, v in verify_chained(kept[:2] + kept[3:], keys())] == ["not_covered"] * 2 + [None] * 3
    assert verify(kept[0], keys()).kind == "malformed"  # alone, a covered message is not a signed one


def test_an_export_holds_the_message_after_its_window_that_covers_its_last(tmp_path):
    store = SqliteStore(tmp_path / "jcm.db")
    sent = messages(range(1, 21))
    kept = [m if seq % 8 == 0 else signed_bytes(m) for seq, m in enumerate(sent, 1)]  # 8 and 16 signed: 17..20 covered
    kept[-1] = sent[-1]
    v = [x for _, x in verify_chained(kept, keys())]
    store.write([x.reading for x in v], messages=[SignedMessage.verified(m, x) for m, x in zip(kept, v)])
    end = T0 + dt.timedelta(seconds=12)  # seqs 1..11 in the window: 9..11 covered by 16
    folder = list(with_covering(store, "test-site", store.signed_messages("test-site", T0, end)))
    store.close()
    assert folder == kept[:16]
    assert all(x.ok for _, x in verify_chained(folder, keys()))
    assert [x.kind for _, x in verify_chained(kept[:11], keys())][-3:] == ["not_covered"] * 3


def test_a_covering_run_stamped_before_the_window_lists_each_message_once(tmp_path):
    """A clock stepped back inside a covered run: seq 3 is stamped before the window, 2 and 4
    in it. The export adds 3 to cover 2 and must not list 4 a second time (``jcm verify``
    would call that a replay)."""
    from contract.custody import sign

    store = SqliteStore(tmp_path / "jcm.db")
    stamps = {1: 10, 2: 11, 3: -30, 4: 12, 5: 13, 6: 14}  # seconds after T0
    sent, prev = [], GENESIS
    for seq, at in stamps.items():
        sent.append(sign(reading(seq, ts=T0 + dt.timedelta(seconds=at)).to_json(), prev, "k1", K1))
        prev = chain_hash(sent[-1])
    kept = [signed_bytes(m) if seq in (2, 3, 5) else m for seq, m in enumerate(sent, 1)]
    v = [x for _, x in verify_chained(kept, keys())]
    assert all(x.ok for x in v)
    store.write([x.reading for x in v], messages=[SignedMessage.verified(m, x) for m, x in zip(kept, v)])
    window = list(store.signed_messages("test-site", T0, T0 + dt.timedelta(minutes=1)))
    assert window == [kept[i] for i in (0, 1, 3, 4, 5)]  # seq 3 is not in it
    folder = list(with_covering(store, "test-site", window))
    store.close()
    assert folder == kept
    assert all(x.ok for _, x in verify_chained(folder, keys()))


def stored(store_url: str) -> tuple[list[bytes], list]:
    """The signed messages of the day the store holds, and its dead letters."""
    store = open_store(store_url)
    try:
        return list(store.signed_messages("test-site", T0, T0 + dt.timedelta(days=1))), store.dead_letters(100)
    finally:
        store.close()


def test_the_collector_keeps_a_signed_backlog_batch_and_refuses_a_broken_one_line_by_line(mosquitto, tmp_path,
                                                                                         store_url):
    sent = messages(range(1, 31))
    topic = topics.batch("test-site", "gw-test")
    broken = lines(sent[20:])
    broken = broken[:3] + broken[4:]  # seq 24 removed on the way
    run(mosquitto, store_url, sites(tmp_path, require=True), [(topic, batch.pack(sent[:20])[0])],
        [(topic, zlib.compress(b"\n".join(broken)))])
    kept, letters = stored(store_url)
    assert kept == [signed_bytes(m) for m in sent[:19]] + [sent[19]]
    assert sorted(d.payload for d in letters) == sorted(broken)
    assert {d.reason for d in letters} == {'custody: batch refused whole: line 4: "prev" left out, but line 3 is '
                                           f'not seq 24 of test-site/gw-test/{E1}'}


SENT = messages(range(1, 31))
GENUINE = set(SENT) | {signed_bytes(m) for m in SENT}


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(40), deadline=None)
@given(n=st.integers(1, 30), limit=st.integers(300, 4000), line=st.integers(0, 99), at=st.integers(0, 10**6),
       byte=st.integers(0, 255))
def test_no_altered_line_of_a_batch_is_taken_for_what_the_gateway_signed(n, limit, line, at, byte):
    payload, count = batch.pack(SENT[:n], limit)
    got = batch.unpack(payload)
    i = line % len(got)
    j = at % len(got[i])
    got[i] = got[i][:j] + bytes([byte]) + got[i][j + 1:]
    try:
        opened = open_batch(got, keys())
    except ValueError:
        return
    # a line the batch verified, or checked alone, is one the gateway signed, byte for byte
    assert all(m in GENUINE for m, v in opened if (v or verify(m, keys())).ok)


def test_a_verifier_holds_a_bounded_run_of_covered_messages(monkeypatch):
    monkeypatch.setattr(custody, "MAX_COVERED_RUN", 3)
    sent = messages(range(1, 7))
    kept = [signed_bytes(m) for m in sent[:5]] + [sent[5]]
    verdicts = [v for _, v in verify_chained(kept, keys())]
    assert [v.kind for v in verdicts] == ["not_covered"] * 2 + [None] * 4
    assert verdicts[0].reason == "not covered: more than 3 covered messages in a row"


def test_a_signature_covers_only_messages_naming_its_own_key():
    """Someone holding k1 after its rotation (an old gateway's disk) cannot vouch, by a
    covering signature k1 makes within its validity, for a reading stamped in k2's time
    that names k2; a genuine chain across the rotation still verifies in a batch."""
    after = reading(1, E2, ts=ROTATED + dt.timedelta(minutes=30))
    forged = signed_bytes(custody.sign(after.to_json(), GENESIS, "k2", K1))  # k2's name, no k2 signature
    covering = custody.sign(reading(2, E2, ts=ROTATED - dt.timedelta(minutes=1)).to_json(),
                            hashlib.sha256(forged).hexdigest(), "k1", K1)
    assert not any(v.ok for m, v in verify_chained([forged, covering], keys()) if m == forged)
    elided = covering.replace(hashlib.sha256(forged).hexdigest().encode(), b"")
    for attempt in ([forged, covering], [forged, elided]):
        try:
            opened = open_batch(attempt, keys())
        except ValueError:
            continue
        assert not (opened[0][1] or verify(opened[0][0], keys())).ok
    # the gateway's own chain across the rotation: k1's last message keeps its signature
    sent, prev = [], GENESIS
    for seq in range(1, 9):
        k1 = seq <= 4
        ts = ROTATED + dt.timedelta(seconds=seq - 5 if k1 else seq)
        sent.append(signed(reading(seq, ts=ts), prev, "k1" if k1 else "k2", K1 if k1 else K2)[1])
        prev = chain_hash(sent[-1])
    opened = open_batch(lines(sent), keys())
    assert all(v.ok for _, v in opened)
    assert [m for m, _ in opened] == [signed_bytes(m) if seq not in (4, 8) else m for seq, m in enumerate(sent, 1)]


def test_a_stored_signed_message_keeps_its_signature_when_its_covered_form_comes_again(mosquitto, tmp_path,
                                                                                      store_url):
    """Whoever can publish can strip the signatures of messages seen on the broker and send
    them again as a batch: valid covered messages, already stored. The store keeps the
    signed form (InfluxDB keeps the last write of a point): otherwise batches that chain on
    one another would leave any length of covered run, beyond what a verifier holds."""
    sent = messages(range(1, 6))
    alone = [(topics.reading("test-site", "gw-test", "m1"), m) for m in sent]
    run(mosquitto, store_url, sites(tmp_path, require=True), alone,
        [(topics.batch("test-site", "gw-test"), batch.pack(sent)[0])])
    kept, _ = stored(store_url)
    assert kept == sent


def test_what_a_refused_line_covers_is_not_stored_without_it(mosquitto, tmp_path, store_url):
    """The line that carries a run's signature refused after the batch held together (here
    a channel the server's register map no longer has): the lines it covers are refused
    with it, naming it, rather than stored as covered messages nothing in the store covers
    (an export of them could not be verified)."""
    sent, prev = [], GENESIS
    for seq in range(1, 6):
        r = reading(seq)
        sent.append(signed(dataclasses.replace(r, values={"gone": 1.0}) if seq == 5 else r, prev)[1])
        prev = chain_hash(sent[-1])
    topic = topics.batch("test-site", "gw-test")
    run(mosquitto, store_url, sites(tmp_path, require=True), [(topic, batch.pack(sent[:3])[0])],
        [(topic, batch.pack(sent[2:])[0])])
    kept, letters = stored(store_url)
    assert kept == [signed_bytes(m) for m in sent[:2]] + [sent[2]]  # 3 is stored signed by the first batch
    assert all(x.ok for _, x in verify_chained(kept, keys()))
    reasons = {d.payload: d.reason for d in letters}
    gone = "device 'm1' of site 'test-site' has no channel(s) gone in its register map"
    assert reasons[sent[4]] == gone
    assert reasons[signed_bytes(sent[3])] == f"custody: covered by seq 5, which was refused: {gone}"


def test_an_export_finds_the_covering_message_however_long_after_its_window(store_url):
    """A backlog of sparse readings: one batch's run may span months (a gateway away for
    weeks, reading hourly); the message covering a window's last is exported however far
    after the window it is stamped."""
    open_ended = {"test-site": [public_key(K1, "k1", valid_from=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))]}
    sent, prev = [], GENESIS
    for seq in range(1, 8):
        ts = T0 + (dt.timedelta(days=90) if seq == 7 else dt.timedelta(hours=seq))
        sent.append(signed(reading(seq, ts=ts), prev)[1])
        prev = chain_hash(sent[-1])
    kept = [signed_bytes(m) for m in sent[:-1]] + [sent[-1]]
    v = [x for _, x in verify_chained(kept, open_ended)]
    assert all(x.ok for x in v)
    store = open_store(store_url)
    try:
        store.write([x.reading for x in v], messages=[SignedMessage.verified(m, x) for m, x in zip(kept, v)])
        end = T0 + dt.timedelta(days=1)
        folder = list(with_covering(store, "test-site", store.signed_messages("test-site", T0, end)))
    finally:
        store.close()
    assert folder == kept
