"""Adversarial checks of the embedded store's row per message (store/sqlite_store.py,
store/message_rows.py): what another writer, a crash or a hostile message can do to it."""

import datetime as dt

from contract.message import DeviceStatus, Reading
from store import open_store

T0 = dt.datetime(2026, 10, 1, 0, 0, tzinfo=dt.UTC)


def reading(device="m1", minutes=0, seq=1, **values):
    return Reading(site="s1", gateway="gw1", device=device, ts=T0 + dt.timedelta(minutes=minutes),
                   values=values, quality={}, units={}, status=DeviceStatus.ok, seq=seq)


def test_a_read_decodes_no_row_with_a_layout_it_did_not_list(tmp_path):
    """A read lists a device's layouts, then reads its rows: another process (or thread) that
    commits a row of a new layout between the two must not have that row decoded with a layout
    it does not have (its channels' values swapped, or a reshape error out of the read)."""
    url = f"sqlite:///{tmp_path}/jcm.db"
    reader, writer = open_store(url), open_store(url)
    try:
        writer.write([reading(minutes=0, seq=1, a=1.0, b=2.0)])
        listed = reader._device_layouts

        def then_a_new_layout_lands(site, device):
            layouts = listed(site, device)
            writer.write([reading(minutes=1, seq=2, b=3.0, a=4.0),  # same channels, another order
                          reading(minutes=2, seq=3, a=5.0)])        # another width
            return layouts

        reader._device_layouts = then_a_new_layout_lands
        df = reader.read("s1", T0, T0 + dt.timedelta(minutes=5))
        del reader._device_layouts
        got = {(int((t - T0).total_seconds()) // 60, c): v for t, c, v in zip(df["ts"], df["channel"], df["value"])}
        assert got == {(0, "a"): 1.0, (0, "b"): 2.0}  # the state the layouts were listed in
        again = reader.read_sources("s1", T0, T0 + dt.timedelta(minutes=5), ["m1.a", "m1.b"])
        assert list(again["m1.a"]["value"]) == [1.0, 4.0, 5.0] and list(again["m1.b"]["value"]) == [2.0, 3.0]
    finally:
        reader.close()
        writer.close()
