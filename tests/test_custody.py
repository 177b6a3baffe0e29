"""Chain of custody: signed, chained reading messages, the site's keys, ``jcm keygen`` and
``jcm verify`` over a custody folder, and the documented openssl check."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from contract.config import ConfigError, load_site
from contract.config.custody import CustodyKey, fingerprint
import contract.custody
from contract.custody import (GENESIS, MAX_MESSAGE_BYTES, CustodyError, chain_breaks, chain_hash, load_private_key,
                              sign, signed_bytes, verify, verify_chained, write_folder)
from contract.message import Reading
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jcm.cli import main
from jcm.verify import check_custody
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, tcp_device, write_site

EPOCH = "0123456789abcdef"
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def public_key(private: Ed25519PrivateKey, key_id: str, valid_from=dt.date(2026, 1, 1), **more) -> CustodyKey:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return CustodyKey(id=key_id, public_key=base64.b64encode(raw).decode(), fingerprint=fingerprint(raw),
                      valid_from=valid_from, **more)


def reading(seq: int, ts: dt.datetime = T0, site: str = "mn-solar", value: float = 0.1 + 0.2) -> Reading:
    return Reading(site=site, gateway="gw-mn-01", device="inv-01", ts=ts + dt.timedelta(seconds=seq),
                   values={"ac_power": value, "ac_energy": 123456789.125, "serial": 'é"\\x'},
                   units={"ac_power": "W"}, seq=seq, epoch=EPOCH)


def chain(n: int, key: Ed25519PrivateKey, key_id: str = "k1", ts: dt.datetime = T0, site: str = "mn-solar",
          first: int = 1) -> list[bytes]:
    out, prev = [], GENESIS
    for seq in range(first, first + n):
        out.append(sign(reading(seq, ts, site).to_json(), prev, key_id, key))
        prev = chain_hash(out[-1])
    return out


@pytest.fixture(scope="module")
def k1():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def keys(k1):
    return {"mn-solar": [public_key(k1, "k1")]}


def test_a_signed_message_verifies_and_is_still_a_reading(k1, keys):
    m = chain(1, k1)[0]
    v = verify(m, keys)
    assert v.ok and v.kind is None and v.key_id == "k1" and v.prev == GENESIS
    assert v.reading == Reading.from_json(m)  # a subscriber that ignores custody reads it unchanged
    assert v.reading.values["ac_power"] == 0.1 + 0.2
    # the signed bytes are the message up to "key", closed: no re-serialization
    assert signed_bytes(m) == m[:m.index(b',"sig":"')] + b"}"
    assert json.loads(m)["sig"] and "sig" not in json.loads(signed_bytes(m))


def test_every_changed_byte_is_refused(k1, keys):
    m = chain(1, k1)[0]
    for i in range(len(m)):
        for flip in (0x01, 0x20):
            tampered = m[:i] + bytes([m[i] ^ flip]) + m[i + 1:]
            assert not verify(tampered, keys).ok, (i, tampered)


def test_a_signature_has_one_text(k1, keys):
    m = chain(1, k1)[0]
    last = m[-5:-4]  # the signature's 86th character: its low 4 bits carry nothing
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    other = bytes([alphabet[alphabet.index(last) ^ 1]])
    assert base64.b64decode(m[-90:-2]) == base64.b64decode(m[-90:-5] + other + b"==")
    v = verify(m[:-5] + other + m[-4:], keys)
    assert v.kind == "malformed" and "canonical base64" in v.reason


def test_a_changed_value_is_named_a_bad_signature(k1, keys):
    m = chain(1, k1)[0]
    tampered = m.replace(b'"ac_energy":123456789.125', b'"ac_energy":123456789.126')
    v = verify(tampered, keys)
    assert v.kind == "bad_signature" and v.reason == "bad signature (key 'k1')"
    assert v.reading.seq == 1  # the report can name the reading


def test_another_sites_key_is_unknown_or_a_bad_signature(k1, keys):
    other = Ed25519PrivateKey.generate()
    both = {**keys, "ph-biogas": [public_key(other, "k-ph")]}
    forged = chain(1, other, key_id="k-ph")[0]  # claims mn-solar, signed with ph-biogas's key
    v = verify(forged, both)
    assert v.kind == "unknown_key" and "not a key of site mn-solar" in v.reason
    assert verify(chain(1, other, key_id="k1")[0], both).kind == "bad_signature"  # naming mn-solar's key id
    assert verify(chain(1, other, key_id="k-ph", site="ph-biogas")[0], both).ok


def test_a_rotated_key_verifies_its_own_period_only(k1):
    k2 = Ed25519PrivateKey.generate()
    rotated = {"mn-solar": [public_key(k1, "k1", valid_to=dt.date(2026, 6, 1)),
                            public_key(k2, "k2", valid_from=dt.date(2026, 6, 1))]}
    before, after = dt.datetime(2026, 3, 1, tzinfo=dt.UTC), dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
    assert verify(chain(1, k1, "k1", before)[0], rotated).ok
    assert verify(chain(1, k2, "k2", after)[0], rotated).ok
    late = verify(chain(1, k1, "k1", after)[0], rotated)
    assert late.kind == "key_not_valid" and "not valid at 2026-07-01" in late.reason
    assert verify(chain(1, k2, "k2", before)[0], rotated).kind == "key_not_valid"
    edge = dt.datetime(2026, 5, 31, 23, 59, 59, tzinfo=dt.UTC)  # valid_to is exclusive
    assert verify(chain(1, k1, "k1", edge)[0], rotated).kind == "key_not_valid"  # seq 1 is stamped +1 s


def test_a_revoked_key_signs_nothing_from_its_revocation(k1):
    revoked = {"mn-solar": [public_key(k1, "k1", revoked=dt.date(2026, 5, 1))]}
    assert verify(chain(1, k1, ts=dt.datetime(2026, 4, 30, tzinfo=dt.UTC))[0], revoked).ok
    v = verify(chain(1, k1, ts=dt.datetime(2026, 5, 2, tzinfo=dt.UTC))[0], revoked)
    assert v.kind == "key_revoked" and "revoked at 2026-05-01" in v.reason


@pytest.mark.parametrize("message, why", [
    (b"{}", 'does not end with a "sig" member'),
    (b'{"a":1,"sig":"' + b"A" * 86 + b'=="}', 'do not end with "prev"'),
    (b"x" * (MAX_MESSAGE_BYTES + 1), "more than"),
])
def test_malformed_messages_are_named(keys, message, why):
    v = verify(message, keys)
    assert v.kind == "malformed" and why in v.reason


def test_ambiguous_signed_bytes_are_refused(k1, keys):
    body = reading(1).to_json()
    twice = body[:-1] + ',"site":"ph-biogas"}'  # readers that keep the first or the last member disagree
    assert "repeated" in verify(sign(twice, GENESIS, "k1", k1), keys).reason
    inner = body[:-1] + ',"sig":"x"}'
    assert '"sig" member inside' in verify(sign(inner, GENESIS, "k1", k1), keys).reason
    no_epoch = json.loads(body)
    del no_epoch["epoch"]
    assert "epoch" in verify(sign(json.dumps(no_epoch, separators=(",", ":")), GENESIS, "k1", k1), keys).reason


def test_sign_refuses_what_no_verifier_would_accept(k1):
    with pytest.raises(ValueError, match="would exceed"):
        sign('{"x":"' + "a" * MAX_MESSAGE_BYTES + '"}', GENESIS, "k1", k1)
    with pytest.raises(ValueError, match="a JSON object"):
        sign(reading(1).to_json(), "0" * 63, "k1", k1)


def verdicts(messages, keys):
    return [verify(m, keys) for m in messages]


def kinds(messages, keys):
    return [(b.kind, b.first_seq, b.last_seq) for b in chain_breaks(verdicts(messages, keys))]


def test_a_whole_chain_has_no_breaks(k1, keys):
    assert kinds(chain(20, k1), keys) == []
    assert kinds(chain(5, k1)[2:], keys) == []  # a period starts mid-chain


def test_a_dropped_message_is_a_gap(k1, keys):
    m = chain(10, k1)
    assert kinds(m[:3] + m[6:], keys) == [("gap", 4, 6)]
    assert str(chain_breaks(verdicts(m[:3] + m[6:], keys))[0]) == \
        f"mn-solar/gw-mn-01/{EPOCH} seq 4..6: gap: 3 message(s) missing"


def test_a_replay_is_detected(k1, keys):
    m = chain(5, k1)
    assert kinds(m + [m[1]], keys) == [("replay", 2, 2)]


def test_a_reorder_is_detected(k1, keys):
    m = chain(5, k1)
    assert kinds([m[0], m[2], m[1], m[3], m[4]], keys) == [("reorder", 2, 2)]


def test_another_message_with_a_used_seq_is_a_conflict(k1, keys):
    m = chain(3, k1)
    other = sign(reading(2, value=99.0).to_json(), chain_hash(m[0]), "k1", k1)
    assert kinds(m + [other], keys) == [("conflict", 2, 2)]


def test_a_wrong_prev_is_named(k1, keys):
    m = chain(3, k1)
    skipped = sign(reading(3).to_json(), chain_hash(m[0]), "k1", k1)  # links to seq 1, not 2
    assert kinds(m[:2] + [skipped], keys) == [("wrong_prev", 3, 3)]
    restart = sign(reading(1).to_json(), "1" * 64, "k1", k1)
    assert kinds([restart], keys) == [("wrong_prev", 1, 1)]


def test_chains_are_per_gateway_and_epoch(k1, keys):
    a = chain(3, k1)
    other_epoch = [m.replace(EPOCH.encode(), b"fedcba9876543210") for m in a]  # re-signed below
    resigned, prev = [], GENESIS
    for m in other_epoch:
        resigned.append(sign(signed_bytes(m)[:m.index(b',"prev"')] + b"}", prev, "k1", k1))
        prev = chain_hash(resigned[-1])
    assert kinds([a[0], resigned[0], a[1], resigned[1], a[2], resigned[2]], keys) == []


def forged(message: bytes) -> bytes:
    """``message`` with the first character of its signature changed (still canonical base64)."""
    at = len(message) - 90  # after ',"sig":"', 88 characters and '"}' from the end
    return message[:at] + (b"B" if message[at:at + 1] != b"B" else b"C") + message[at + 1:]


def test_signatures_checked_in_worker_processes_give_the_same_verdicts_in_order(k1, monkeypatch):
    """``verify_chained`` with ``jobs``: the Ed25519 checks made ahead in worker processes,
    chunk by chunk, all else here in order: the verdicts of one process, a forged signature
    in the last chunk, a key id two sites share and covered messages among them."""
    other = Ed25519PrivateKey.generate()
    keys = {"mn-solar": [public_key(k1, "k1")], "ph-biogas": [public_key(other, "k1")]}
    a = chain(30, k1)
    a[9:12] = [signed_bytes(m) for m in a[9:12]]  # covered by seq 13
    a[20] = sign(reading(21, value=5.0).to_json(), chain_hash(a[19]), "k1", other)  # the other site's key
    b = chain(6, other, site="ph-biogas")
    b[2] = chain(6, k1, site="ph-biogas")[2]  # the id of ph-biogas's key, mn-solar's key
    messages = (a[:15] + b[:3] + [b"{}", b"x" * (MAX_MESSAGE_BYTES + 1)] + a[15:] + b[3:]
                + [signed_bytes(m) for m in chain(3, k1, first=40)]  # covered, nothing after them
                + [forged(a[-1])])
    submitted = []

    class Pool(contract.custody.ProcessPoolExecutor):
        def submit(self, fn, *args):
            submitted.append(len(args[0]))
            return super().submit(fn, *args)

    monkeypatch.setattr(contract.custody, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(contract.custody, "CHUNK", 4)
    monkeypatch.setattr(contract.custody, "PARALLEL_CHUNKS", 2)
    one = list(verify_chained(messages, keys))
    assert list(verify_chained(messages, keys, jobs=2)) == one
    assert sum(submitted) == len(messages) and max(submitted) == 4
    assert [v.kind for _, v in one if not v.ok] == ["bad_signature", "malformed", "malformed", "bad_signature",
                                                    "not_covered", "not_covered", "not_covered", "bad_signature"]
    assert one[-1] == (messages[-1], verify(messages[-1], keys))
    submitted.clear()
    assert list(verify_chained(messages[:4], keys, jobs=2)) == one[:4] and not submitted  # one chunk: one process


ORPHANS = """
import multiprocessing, sys, time
import contract.custody as c
c.CHUNK, c.PARALLEL_CHUNKS = 4, 2
def messages():
    yield from [b"{}"] * 64
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    time.sleep(60)  # killed meanwhile
for _ in c.verify_chained(messages(), {}, jobs=2):
    pass
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_end_when_the_verifier_is_killed():
    verifier = subprocess.Popen([sys.executable, "-c", ORPHANS], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in verifier.stdout.readline().split()]
        assert len(workers) == 2 and all(running(pid) for pid in workers)
    finally:
        verifier.kill()
        verifier.wait()
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(running(pid) for pid in workers)


def test_a_sig_member_is_found_however_it_is_written(k1, keys):
    """The signed bytes are parsed a second time only where a ``sig`` member could be: its
    name escaped, or a number too long for ``json``, is refused as before."""
    body = reading(1).to_json()
    escaped = body[:-1] + ',"s\\u0069g":"x"}'
    assert '"sig" member inside' in verify(sign(escaped, GENESIS, "k1", k1), keys).reason
    long = body[:-1] + ',"n":' + "9" * 5000 + "}"
    assert verify(sign(long, GENESIS, "k1", k1), keys).kind == "malformed"


# -- site files -------------------------------------------------------------------------------

def site_with_custody(tmp_path, custody) -> str:
    return str(write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", 15999)], custody=custody))


def key_entry(private, key_id="k1", **more):
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v
            for k, v in public_key(private, key_id, **more).model_dump().items() if v is not None}


def test_site_keys_load_as_base64_or_pem(tmp_path, k1):
    pem = k1.public_key().public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    entry = key_entry(k1, valid_to=dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    site = load_site(site_with_custody(tmp_path, {"require_signatures": True, "keys": [
        entry, dict(key_entry(Ed25519PrivateKey.generate(), "k2", valid_from=dt.date(2027, 1, 1)))]}))
    assert site.custody.keys[0].valid_from == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert load_site(site_with_custody(tmp_path, {"keys": [dict(entry, public_key=pem)]})).custody.keys[0].raw == \
        site.custody.keys[0].raw


@pytest.mark.parametrize("change, expected", [
    (lambda e: e[0].update(fingerprint="0" * 64), "custody.keys[k1].fingerprint: 0000"),
    (lambda e: e[0].update(public_key="bm90IGEga2V5"), "custody.keys[k1].public_key: base64 of 9 bytes"),
    (lambda e: e[0].update(public_key="-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----"),
     "not a PEM public key"),
    (lambda e: e[0].update(valid_to="2025-01-01"), "custody.keys[k1].valid_to: 2025-01-01T00:00:00+00:00 is not after"),
    (lambda e: e[0].update(valid_from="2026-01-01T00:00:00"), "has no time zone"),
    (lambda e: e[0].update(revoked="2025-06-01"), "is before valid_from: the key never signed"),
    (lambda e: e.append(dict(e[0])), "custody.keys[1].id: key id 'k1' repeated"),
    (lambda e: e.append(dict(e[0], id="k2")), "custody.keys[k2].public_key: the same key as keys[0]"),
    (lambda e: e.append(key_entry(Ed25519PrivateKey.generate(), "k2", valid_from=dt.date(2026, 6, 1))),
     "custody.keys[k2].valid_from: key 'k2' starts while key 'k1' is still valid"),
    (lambda e: e.clear(), "custody.require_signatures: signatures are required but no keys are listed"),
])
def test_bad_site_keys_are_named(tmp_path, k1, change, expected):
    entries = [key_entry(k1)]
    change(entries)
    with pytest.raises(ConfigError) as exc:
        load_site(site_with_custody(tmp_path, {"require_signatures": True, "keys": entries}))
    assert expected in str(exc.value)


def test_rotated_and_revoked_keys_do_not_overlap(tmp_path, k1):
    k2, k3 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    load_site(site_with_custody(tmp_path, {"keys": [
        key_entry(k1, valid_to=dt.datetime(2026, 6, 1, tzinfo=dt.UTC)),
        key_entry(k2, "k2", valid_from=dt.date(2026, 6, 1), revoked=dt.date(2026, 7, 1)),
        key_entry(k3, "k3", valid_from=dt.date(2026, 7, 1))]}))


# -- jcm keygen -------------------------------------------------------------------------------

def test_keygen_makes_a_private_key_only_its_owner_reads_and_lines_that_verify(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keygen", "--site", "mn-solar", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    edge, server = (yaml.safe_load(part) for part in printed.split("\n\n"))
    private_file = out / "mn-solar.key"
    assert edge["custody"]["private_key_file"] == str(private_file.resolve())
    assert private_file.stat().st_mode & 0o777 == 0o600
    site = load_site(site_with_custody(tmp_path, server["custody"]))
    key = load_private_key(private_file)
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    message = sign(reading(1, now - dt.timedelta(seconds=1)).to_json(), GENESIS, site.custody.keys[0].id, key)
    assert verify(message, {"mn-solar": site.custody.keys}).ok
    assert (out / "mn-solar.pub").read_text() == site.custody.keys[0].pem()


def test_keygen_never_overwrites_and_names_a_disclosed_key(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keygen", "--site", "mn-solar", "--out", str(out)]) == 0
    before = (out / "mn-solar.key").read_bytes()
    assert main(["keygen", "--site", "mn-solar", "--out", str(out)]) == 2
    assert "mn-solar.key exists: not overwritten" in capsys.readouterr().err
    os.chmod(out / "mn-solar.key", 0o644)
    assert main(["keygen", "--site", "mn-solar", "--out", str(out)]) == 2
    assert "readable by others (mode 644): treat it as disclosed" in capsys.readouterr().err
    assert (out / "mn-solar.key").read_bytes() == before
    assert main(["keygen", "--site", "../etc", "--out", str(out)]) == 2
    assert "is not a site id" in capsys.readouterr().err


def test_keygen_leaves_no_half_pair(tmp_path, capsys, monkeypatch):
    """A disk that fills between the two files: the private key written first is removed."""
    import errno

    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("jcm.keygen.open", full, raising=False)
    out = tmp_path / "keys"
    assert main(["keygen", "--site", "mn-solar", "--out", str(out)]) == 2
    assert "cannot write the key files: No space left on device" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    assert main(["keygen", "--site", "mn-solar", "--out", str(out)]) == 0  # the next attempt is not blocked


def test_a_private_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "k.key"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o640)
    with pytest.raises(CustodyError, match=r"k.key: private key readable by others \(mode 640\)"):
        load_private_key(path)
    path.chmod(0o600)
    load_private_key(path)
    path.write_text("not a key")
    with pytest.raises(CustodyError, match="not an unencrypted PEM private key"):
        load_private_key(path)


# -- jcm verify ---------------------------------------------------------------------------------

def export(tmp_path, k1, messages) -> str:
    write_folder(tmp_path / "export", {"mn-solar": [public_key(k1, "k1")]}, messages)
    return str(tmp_path / "export")


def run_verify(folder, capsys) -> tuple[int, str]:
    """The custody part of ``jcm verify`` (the rest needs a whole export: test_export_verify.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "readings.db")
        try:
            problems, lines, _, _, _ = check_custody(Path(folder), store)
        except ValueError as exc:
            return 2, f"{exc}\n"
        finally:
            store.close()
    return (1 if problems else 0), "\n".join(lines) + "\n"


def test_verify_passes_a_whole_folder(tmp_path, k1, capsys):
    rc, out = run_verify(export(tmp_path, k1, chain(50, k1)), capsys)
    assert rc == 0, out
    assert "messages: 50, signatures verified: 50, refused: 0" in out
    assert f"chain mn-solar/gw-mn-01/{EPOCH}: seq 1..50, 50 verified message(s)" in out
    assert out.rstrip().endswith("custody: every signature verified, every chain whole")


def test_verify_names_a_changed_reading_and_the_gap_it_leaves(tmp_path, k1, capsys):
    m = chain(10, k1)
    m[4] = m[4].replace(b'"ac_energy":123456789.125', b'"ac_energy":223456789.125')
    rc, out = run_verify(export(tmp_path, k1, m), capsys)
    assert rc == 1
    assert f"custody/messages/messages.jsonl.gz:5 mn-solar/gw-mn-01/{EPOCH} seq 5: bad signature (key 'k1')" in out
    assert "seq 5: gap: 1 message(s) missing (refused there: bad signature (key 'k1'))" in out
    assert "custody: 1 message(s) refused, 1 chain break(s)" in out


def test_verify_names_a_dropped_a_replayed_and_a_reordered_message(tmp_path, k1, capsys):
    m = chain(10, k1)
    rc, out = run_verify(export(tmp_path, k1, m[:3] + m[4:6] + [m[7], m[6]] + m[8:] + [m[0]]), capsys)
    assert rc == 1
    assert "seq 4: gap: 1 message(s) missing" in out
    assert "seq 7: reorder: came after seq 8" in out
    assert "seq 1: replay: the same message again" in out
    assert "custody: 3 chain break(s)" in out


def test_verify_lists_a_bounded_number_of_breaks(tmp_path, k1, capsys):
    m = chain(130, k1)
    rc, out = run_verify(export(tmp_path, k1, m[::2]), capsys)  # every other message dropped
    assert rc == 1 and "custody: 64 chain break(s)" in out
    assert out.count(": gap: 1 message(s) missing") == 50 and "... and 14 more: gap: 14" in out


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a": ' * 100_000])
def test_verify_refuses_keys_nested_too_deeply_with_one_line(tmp_path, k1, capsys, text):
    """The folder is a verifier's input: Python's JSON parser recurses, and would raise a traceback."""
    folder = export(tmp_path, k1, chain(2, k1))
    (tmp_path / "export" / "custody" / "keys.json").write_text(text)
    rc, out = run_verify(folder, capsys)
    assert rc == 2 and "Traceback" not in out
    assert "keys.json: nested too deeply to be a list of keys" in out and len(out.splitlines()) == 1


def test_verify_refuses_an_unusable_folder_with_one_line(tmp_path, k1, capsys):
    folder = export(tmp_path, k1, chain(2, k1))
    keys = tmp_path / "export" / "custody" / "keys.json"
    listed = json.loads(keys.read_text())
    listed[0]["fingerprint"] = "f" * 64
    keys.write_text(json.dumps(listed))
    rc, out = run_verify(folder, capsys)
    assert rc == 2 and "Traceback" not in out
    assert "keys.json: keys of site mn-solar: keys[0].fingerprint: ffff" in out and len(out.splitlines()) == 1
    listed[0]["fingerprint"] = fingerprint(public_key(k1, "k1").raw)
    keys.write_text(json.dumps(listed + [dict(listed[0], id="k2")]))
    rc, out = run_verify(folder, capsys)
    assert rc == 2 and "keys of site mn-solar: " in out and "the same key as keys[0]" in out
    keys.unlink()
    rc, out = run_verify(folder, capsys)
    assert rc == 2 and "keys.json: cannot read" in out
    write_folder(tmp_path / "export", {"mn-solar": [public_key(k1, "k1")]}, [])
    (tmp_path / "export" / "custody" / "messages" / "messages.jsonl.gz").write_bytes(b"not gzip")
    rc, out = run_verify(folder, capsys)
    assert rc == 2 and "messages.jsonl.gz: not a readable gzip file" in out


def test_verify_fails_when_a_pem_file_is_not_the_listed_key(tmp_path, k1, capsys):
    folder = export(tmp_path, k1, chain(2, k1))
    pem = tmp_path / "export" / "custody" / "keys" / "k1.pem"
    pem.write_text(public_key(Ed25519PrivateKey.generate(), "k1").pem())
    rc, out = run_verify(folder, capsys)
    assert rc == 1 and "key file custody/keys/k1.pem: not the key 'k1' of keys.json" in out
    assert "custody: 1 key file(s) not as keys.json" in out
    pem.unlink()
    rc, out = run_verify(folder, capsys)
    assert rc == 1 and "custody/keys/k1.pem: cannot read" in out


def test_verify_bounds_a_line(tmp_path, k1, capsys):
    folder = export(tmp_path, k1, chain(2, k1))
    path = tmp_path / "export" / "custody" / "messages" / "messages.jsonl.gz"
    with gzip.open(path, "ab") as f:
        f.write(b"x" * (3 * MAX_MESSAGE_BYTES) + b"\n")
    rc, out = run_verify(folder, capsys)
    assert rc == 1 and "messages.jsonl.gz:3: malformed: " in out and "messages: 3," in out


# -- the documented openssl check -------------------------------------------------------------

def documented_commands() -> str:
    """The shell block of the README's chain-of-custody section that checks one message."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Chain of custody"):]
    return re.search(r"```sh\n(.*?)```", section[section.index("openssl pkeyutl") - 2000:], re.S).group(1)


@pytest.mark.parametrize("tamper", [False, True])
def test_the_documented_openssl_check_works(tmp_path, k1, tamper):
    m = chain(6, k1)
    if tamper:
        m[4] = m[4].replace(b'"ac_power":0.30000000000000004', b'"ac_power":0.30000000000000005')
    folder = export(tmp_path, k1, m)
    script = documented_commands()
    assert "openssl pkeyutl -verify" in script and "sha256sum" in script
    done = subprocess.run(["bash", "-ec", script], cwd=folder, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "F": "custody/messages/messages.jsonl.gz", "N": "5"})
    if tamper:
        assert done.returncode != 0 and "Signature Verified Successfully" not in done.stdout
        return
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Signature Verified Successfully" in done.stdout
    assert f"{chain_hash(m[4])}  signed.bin" in done.stdout  # what seq 6 carries as prev
    assert f"{public_key(k1, 'k1').fingerprint}  -" in done.stdout
    assert chain_hash(m[4]) == json.loads(m[5])["prev"]


def documented_covered_check() -> str:
    """The README's shell block that follows a covered message to the signature covering it."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("**A covered message**"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("tamper", [False, True])
def test_the_documented_check_of_a_covered_message_works(tmp_path, k1, tamper, capsys):
    m = chain(6, k1)
    kept = [signed_bytes(x) for x in m[:5]] + [m[5]]  # 1..5 as a signed backlog batch leaves them: covered by 6
    if tamper:
        kept[3] = kept[3].replace(b'"ac_power":0.30000000000000004', b'"ac_power":0.30000000000000005')
    folder = export(tmp_path, k1, kept)
    done = subprocess.run(["bash", "-c", documented_covered_check()], cwd=folder, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout == (
        "linked: no: line 5 does not carry the hash of line 4; the signature that covers it: line 5\n" if tamper
        else "linked: yes; the signature that covers it: line 6\n"), done.stdout + done.stderr
    rc, out = run_verify(folder, capsys)
    if not tamper:
        assert rc == 0 and "messages: 6, signatures verified: 6 (5 by the signature of a later message" in out, out
        return
    assert rc == 1 and "messages: 6, signatures verified: 2 (1 by the signature of a later message" in out, out
    assert ("seq 1: not covered: seq 4 of mn-solar/gw-mn-01/0123456789abcdef has no signature and the message "
            "after it is not seq 5 of its chain carrying its hash") in out, out


# -- hostile input ----------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import fuzz_examples  # noqa: E402

_SIGNER = Ed25519PrivateKey.generate()
_KEYS = {"mn-solar": [public_key(_SIGNER, "k1")]}
_GOOD = chain(3, _SIGNER)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(200), deadline=None)
@given(st.integers(0, 2), st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=8)), min_size=1, max_size=4))
def test_no_edit_of_a_signed_message_verifies_or_crashes(which, edits):
    """Whatever is spliced into a signed message, verify() gives a verdict, never an
    exception, and only the untouched message verifies."""
    m = _GOOD[which]
    for at, text in edits:
        at %= len(m) + 1
        m = m[:at] + text + m[at + len(text) // 2:]
    v = verify(m, _KEYS)
    assert v.ok == (m == _GOOD[which]), v
    chain_breaks([v])


_EPOCHS = ("00000000000000e0", "00000000000000e1", "00000000000000e2")


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(25), deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 90), st.booleans()), min_size=1, max_size=10),
                          st.integers(0, 9), st.integers(1, 10)), min_size=1, max_size=3),
       st.integers(0, 600), st.integers(0, 600))
def test_a_chain_cut_short_in_the_reading_window_is_never_witnessed(chains, start_minute, length):
    """Random chains (clocks that never step back, some messages kept covered), each cut at a
    random point at either end (the messages before or after it removed, as whoever makes or
    edits an export could): ``jcm verify`` names every chain end the cut took a message of
    the reading window from, and a chain's end is witnessed exactly when its last message is
    stamped at or after the window's end (exclusive: the recomputation reads nothing stamped
    there); its first before the start, or it begins its chain."""
    start = T0 + dt.timedelta(minutes=start_minute)
    end = start + dt.timedelta(minutes=length)
    kept, named = [], set()
    for (steps, head, tail), epoch in zip(chains, _EPOCHS):
        ts, prev, made = T0, GENESIS, []
        for seq, (step, covered) in enumerate(steps, 1):
            ts += dt.timedelta(minutes=step)
            r = Reading(site="mn-solar", gateway="gw-mn-01", device="inv-01", ts=ts, values={"ac_energy": seq},
                        seq=seq, epoch=epoch)
            m = sign(r.to_json(), prev, "k1", _SIGNER)
            prev = chain_hash(m)
            made.append((ts, m, covered))
        tail = min(tail, len(made))
        head = min(head, tail - 1)
        # a covered message needs the next one kept: the last kept carries its signature
        kept += [signed_bytes(m) if covered and i < tail - 1 else m for i, (_, m, covered) in enumerate(made)][head:tail]
        # what the verdict must be, from what was made and what was kept
        if any(start <= t for t, _, _ in made[:head]):
            named.add(("head", epoch))  # the cut took a message of the window
        if head and made[head][0] >= start:
            named.add(("head", epoch))
        if any(t < end for t, _, _ in made[tail:]) or made[tail - 1][0] < end:
            named.add(("tail", epoch))
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), _KEYS, kept)
        store = SqliteStore(Path(tmp) / "readings.db")
        try:
            problems, lines, _, unwitnessed, _ = check_custody(Path(tmp), store, (start, end), {}, witnessed=True)
        finally:
            store.close()
    assert not problems, lines
    found = {("head" if " before seq " in u else "tail", u.split()[0].rsplit("/", 1)[1]) for u in unwitnessed}
    assert found == named, lines
