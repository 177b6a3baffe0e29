"""The chain of custody on arrival, with the real collector behind a real Mosquitto and
both stores: signed messages verified against the site's keys (valid at their ts) and
kept byte for byte; a forged, altered, unknown-key, rotated-out or revoked-key message is
a dead letter with the reason; a replay of the same bytes is stored once, one of other
bytes is a conflict and never replaces the stored one; a wrong prev is a finding even
when its neighbour arrives later or on another collector of a shared subscription; a
dropped message is the existing gap finding; a site that requires signatures refuses
unsigned readings; a message at the highest seq costs that message at most."""

import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import sqlite3
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.custody import CustodyCheck
from collector.service import Collector
from contract.config import load_site
from contract import topics
from contract.custody import GENESIS, chain_hash, sign, verify
from contract.message import MAX_SEQ, Reading
from contract.store import SignedMessage
from store import open_store
from tests.conftest import tcp_device, wait_until, write_site
from tests.test_collector import Publisher, acknowledgements, claimed, config

E1, E2 = "00000000000000e1", "00000000000000e2"
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
ROTATED = T0 + dt.timedelta(hours=1)  # k1 signs before, k2 from then on
REVOKED = T0 + dt.timedelta(hours=2)  # k2 revoked
K1, K2, KO = (Ed25519PrivateKey.generate() for _ in range(3))


def key_entry(key_id, key, valid_from, **more):
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"id": key_id, "public_key": base64.b64encode(raw).decode(), "fingerprint": hashlib.sha256(raw).hexdigest(),
            "valid_from": valid_from.isoformat(), **more}


def sites(tmp_path, require=False):
    write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", 1502)], custody={
        "require_signatures": require,
        "keys": [key_entry("k1", K1, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), valid_to=ROTATED.isoformat()),
                 key_entry("k2", K2, ROTATED, revoked=REVOKED.isoformat())]})
    return write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", 1503)], name="other-site", gateway="gw-other",
                      custody={"keys": [key_entry("ko", KO, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))]}).parent


def reading(seq, epoch=E1, ts=None, energy=None, site="test-site", gateway="gw-test"):
    return Reading(site=site, gateway=gateway, device="m1", ts=ts or T0 + dt.timedelta(seconds=seq),
                   values={"energy_import": energy or 1000.0 + seq}, seq=seq, epoch=epoch)


def signed(r, prev, key_id="k1", key=K1):
    return topics.reading(r.site, r.gateway, r.device), sign(r.to_json(), prev, key_id, key)


def chain(seqs, epoch=E1, key_id="k1", key=K1, ts=None):
    """Signed messages of seqs 1..max(seqs), properly chained; those of ``seqs``, by seq."""
    out, prev = {}, GENESIS
    for seq in range(1, max(seqs) + 1):
        out[seq] = signed(reading(seq, epoch, ts=ts and ts + dt.timedelta(seconds=seq)), prev, key_id, key)
        prev = chain_hash(out[seq][1])
    return {s: out[s] for s in seqs}



def run(mosquitto, store_url, sites_dir, *groups, settle=False):
    """Publish each group of messages, waiting for the collector to take each before the next;
    ``settle``: then give the gap check time (grace 0.5 s, checked every second)."""
    c = Collector(config(mosquitto, store_url, sites_dir, gap_grace_s=0.5))
    c.start()
    pub = Publisher(mosquitto)
    try:
        # a probe resent until the subscription is in place: an unsigned reading of the other site, a day before
        probe = reading(1, None, T0 - dt.timedelta(days=1), site="other-site", gateway="gw-other")
        assert wait_until(lambda: pub.send([(topics.reading("other-site", "gw-other", "m1"),
                                             probe.to_json().encode())]) or c.stored >= 1, 20)
        time.sleep(0.5)
        for group in groups:
            done = c.stored + c.dead + len(group)
            pub.send(group)
            assert wait_until(lambda: c.stored + c.dead >= done, 20), (c.stored, c.dead, done)
        time.sleep(2.2 if settle else 0)
        return c
    finally:
        pub.close()
        c.stop()


def test_signed_messages_are_checked_on_arrival_and_kept_byte_for_byte(mosquitto, tmp_path, store_url):
    a = chain(range(1, 13))
    sent = {s: a[s] for s in (1, 2, 4, 3, 6, 5, 7, 9, 11, 12)}  # out of order; 8 dropped on the way; 10 below
    altered = (a[7][0], a[7][1].replace(b'"energy_import":1007.0', b'"energy_import":9007.0'))
    forged = signed(reading(13), chain_hash(a[12][1]), "ko", KO)  # another site's key
    stranger = signed(reading(13), chain_hash(a[12][1]), "kx", Ed25519PrivateKey.generate())
    conflict = signed(reading(3, energy=5.0), chain_hash(a[2][1]))  # validly signed, other bytes
    wrong_prev = signed(reading(10), "ab" * 32)  # 9 stored before it, 11 after it
    # the key rotation: k1 signs up to ROTATED (excluded), k2 from it; k2 signs nothing from REVOKED
    b1 = signed(reading(1, E2, ts=ROTATED - dt.timedelta(milliseconds=1)), GENESIS)
    b2 = signed(reading(2, E2, ts=ROTATED), chain_hash(b1[1]), "k2", K2)
    late_k1 = signed(reading(3, E2, ts=ROTATED), chain_hash(b2[1]))
    revoked = signed(reading(3, E2, ts=REVOKED), chain_hash(b2[1]), "k2", K2)
    c = run(mosquitto, store_url, sites(tmp_path),
            [altered, *[sent[s] for s in (1, 2, 4, 3, 6, 5, 7, 9)]],
            [sent[11], sent[12], forged, stranger, b1, b2, late_k1, revoked],
            [a[2], a[5], conflict],  # replays: two identical, one of other bytes
            [wrong_prev], settle=True)
    store = open_store(store_url)
    try:
        kept = list(store.signed_messages("test-site", T0, T0 + dt.timedelta(days=1)))
        assert kept == [a[s][1] for s in (1, 2, 3, 4, 5, 6, 7, 9)] + [wrong_prev[1], a[11][1], a[12][1], b1[1], b2[1]]
        reasons = [d.reason for d in store.dead_letters()]
        expected = ["custody: bad signature (key 'k1')", "custody: unknown key 'ko' (not a key of site test-site)",
                    "custody: unknown key 'kx' (not a key of site test-site)", "custody: conflict: seq 3 of epoch",
                    f"custody: key 'k1' not valid at {ROTATED.isoformat()}",
                    f"custody: key 'k2' revoked at {REVOKED.isoformat()}"]
        assert len(reasons) == len(expected) and all(sum(r.startswith(e) for r in reasons) == 1 for e in expected), \
            reasons
        [(seq, ts, detail)] = [(f.seq, f.ts, f.detail) for f in store.custody_findings("test-site")
                               if f.kind == "conflict"]
        assert (seq, ts) == (3, T0 + dt.timedelta(seconds=3))
        assert chain_hash(a[3][1]) in detail and chain_hash(conflict[1]) in detail
        # the stored 10 is not the one 11 was chained to: the link breaks on both sides
        wrong = [f for f in store.custody_findings("test-site") if f.kind == "wrong_prev"]
        assert [(f.epoch, f.seq, f.ts) for f in wrong] == [(E1, 10, T0 + dt.timedelta(seconds=10)),
                                                           (E1, 11, T0 + dt.timedelta(seconds=11))]
        assert "ab" * 32 in wrong[0].detail
        assert len(store.custody_findings()) == 3  # the identical replays are no finding
        gaps = [(f.first, f.last) for f in store.sequence_findings("test-site") if f.kind == "gap" and not f.resolved]
        assert gaps == [(8, 8)]
        assert len(store.read("test-site", T0, T0 + dt.timedelta(days=1))) == 11 + 2
        energy = store.read("test-site", T0 + dt.timedelta(seconds=3), T0 + dt.timedelta(seconds=4))
        assert energy["value"].tolist() == [1003.0]  # the stored one, not the conflicting one
    finally:
        store.close()
    assert c.failure is None


def test_the_wrong_prev_is_found_whichever_neighbour_comes_first(mosquitto, tmp_path):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    a = chain(range(1, 5))
    bad3 = signed(reading(3), "cd" * 32)
    bad4 = signed(reading(4), "ef" * 32)  # arrives before the 3 it should point to
    run(mosquitto, store_url, sites(tmp_path), [a[1], bad4], [a[2]], [bad3])
    store = open_store(store_url)
    try:
        assert sorted((f.kind, f.seq) for f in store.custody_findings()) == [("wrong_prev", 3), ("wrong_prev", 4)]
    finally:
        store.close()


def test_a_site_that_requires_signatures_refuses_unsigned_readings(mosquitto, tmp_path):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    unsigned = reading(2, ts=T0)
    free = reading(1, site="other-site", gateway="gw-other")
    run(mosquitto, store_url, sites(tmp_path, require=True),
        [chain([1])[1], (topics.reading("test-site", "gw-test", "m1"), unsigned.to_json().encode()),
         (topics.reading("other-site", "gw-other", "m1"), free.to_json().encode())])
    store = open_store(store_url)
    try:
        [letter] = store.dead_letters()
        assert letter.reason == "custody: site 'test-site' requires signed readings; this one is not signed"
        assert len(store.read("test-site", T0, T0 + dt.timedelta(days=1))) == 1
        assert len(store.read("other-site", T0, T0 + dt.timedelta(days=1))) == 1
        assert list(store.signed_messages("other-site", T0, T0 + dt.timedelta(days=1))) == []
    finally:
        store.close()


def test_a_channel_named_like_a_signature_member_leaves_a_reading_unsigned(tmp_path):
    check = CustodyCheck([load_site(sites(tmp_path) / "other-site.yaml")], store=None)
    keyed = reading(1, site="other-site", gateway="gw-other")
    keyed = dataclasses.replace(keyed, values={"key": 2.0, "prev": 1.0})
    assert check.signed(keyed.to_json().encode(), keyed) is None


def test_a_conflict_two_collectors_write_at_once_is_found_after_the_write(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/jcm.db")
    site = load_site(sites(tmp_path) / "test-site.yaml")
    first, second = CustodyCheck([site], store), CustodyCheck([site], store)
    ours, theirs = (dataclasses.replace(reading(1), values={"energy_import": v}) for v in (1.0, 2.0))
    mine, other = (SignedMessage.verified(raw, verify(raw, first.keys)) for raw in
                   (sign(r.to_json(), GENESIS, "k1", K1) for r in (ours, theirs)))
    assert first.conflicts([mine]) == ({}, set()) and second.conflicts([other]) == ({}, set())  # neither is stored yet
    store.write([ours], messages=[mine])
    store.write([theirs], messages=[other])
    assert first.chain_findings([mine]) == []
    [found] = second.chain_findings([other])
    assert (found.kind, found.seq) == ("conflict", 1) and mine.hash in found.detail and other.hash in found.detail
    store.close()


def test_a_signed_message_at_the_highest_seq_costs_that_message_at_most(mosquitto, tmp_path, store_url):
    last = signed(reading(MAX_SEQ, ts=T0), GENESIS)  # signed by the site's key: a gateway's bug, say
    c = run(mosquitto, store_url, sites(tmp_path), [last], [chain([1])[1]])
    assert c.failure is None and c.stored >= 2  # the probe and seq 1, and seq MAX_SEQ where the store holds it
    store = open_store(store_url)
    try:
        assert chain([1])[1][1] in list(store.signed_messages("test-site", T0, T0 + dt.timedelta(days=1)))
    finally:
        store.close()


def stored_messages(path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT count(*) FROM messages").fetchone()[0]


def test_two_collectors_on_a_shared_subscription_check_the_chain_against_the_store(mosquitto, tmp_path):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    sites_dir = sites(tmp_path)
    a = chain(range(1, 201))
    a[100] = signed(reading(100), "ab" * 32)  # 101 keeps the hash of the real 100
    collectors = [Collector(config(mosquitto, store_url, sites_dir, share_group="collectors", batch_size=3,
                                   client_id=f"jcm-collector-{i}")) for i in range(2)]
    for c in collectors:
        c.start()
    pub = Publisher(mosquitto)
    try:
        assert wait_until(lambda: pub.send([a[1]]) or all(c.stored >= 1 for c in collectors), 20)
        pub.send([a[s] for s in range(2, 201)], rate=500)
        # seq 1 went more than once (until both had one): count what the store holds, not what was stored
        assert wait_until(lambda: stored_messages(tmp_path / "jcm.db") == 200, 30)
        assert all(c.stored > 20 for c in collectors)  # each saw part of the chain
    finally:
        pub.close()
        for c in collectors:
            c.stop()
    store = open_store(store_url)
    try:
        assert sorted((f.kind, f.seq) for f in store.custody_findings()) == [("wrong_prev", 100), ("wrong_prev", 101)]
        assert list(store.signed_messages("test-site", T0, T0 + dt.timedelta(days=1))) == [a[s][1] for s in a]
    finally:
        store.close()


def test_on_a_site_with_keys_only_a_dead_letter_its_keys_vouch_for_is_acknowledged(mosquitto, tmp_path):
    """A gateway deletes the rows an acknowledgement claims, and a dead letter's seq is claimed
    (sending it again would change nothing). Anyone with the site's MQTT password, without its
    signing key, could publish ``{"epoch": E, "seq": N}``, a dead letter, and have the gateway delete
    its real reading N before the store had it. On a site with keys, a dead letter is claimed only
    when validly signed by a key of the site (a signed reading of a channel the site does not
    have, here); a forgery or an unsigned one stays at the gateway, sent again."""
    import json

    good = chain(range(1, 4))
    bogus = Reading(site="test-site", gateway="gw-test", device="m1", ts=T0 + dt.timedelta(seconds=4),
                    values={"no_such_channel": 1.0}, seq=4, epoch=E1)
    signed_letter = signed(bogus, chain_hash(good[3][1]))  # validly signed: the gateway's own
    topic = topics.reading("test-site", "gw-test", "m1")
    forged = (topic, json.dumps({"epoch": E1, "seq": 5}).encode())
    unsigned = (topic, dataclasses.replace(bogus, seq=6).to_json().encode())
    run(mosquitto, "sqlite:///" + str(tmp_path / "jcm.db"), sites(tmp_path), [good[s] for s in (1, 2, 3)],
        [signed_letter, forged, unsigned])
    with acknowledgements(mosquitto) as acks:
        assert wait_until(lambda: acks, 10)  # retained: the collector's last claim
    assert claimed(acks[-1]) == {1, 2, 3, 4}
