"""The request planner: fewest reads, 125-register limit, value and scale factor together."""

from contract.config.profile import Point
from gateway.read_plan import plan_requests, split


def pts(*addresses, type_="uint16", table="holding"):
    return [Point(channel=f"c{a}", address=a, type=type_, table=table) for a in addresses]


def test_neighbours_merge_and_far_points_do_not():
    plan = plan_requests(pts(0, 1, 2, 10, 500), max_gap=16)
    assert [(r.start, r.count) for r in plan] == [(0, 11), (500, 1)]


def test_gap_limit_is_respected():
    assert len(plan_requests(pts(0, 20), max_gap=16)) == 2
    assert len(plan_requests(pts(0, 17), max_gap=16)) == 1


def test_never_more_than_125_registers():
    plan = plan_requests(pts(*range(0, 300, 2), type_="uint32"), max_gap=16)
    assert all(r.count <= 125 for r in plan)
    assert sum(len(r.points) for r in plan) == 150
    assert len(plan) == 3  # 300 registers need at least 3 reads


def test_tables_are_never_mixed():
    plan = plan_requests(pts(0, 1) + pts(2, table="input"), max_gap=16)
    assert {(r.table, r.count) for r in plan} == {("holding", 2), ("input", 1)}


def test_value_and_scale_factor_share_a_request_even_at_the_limit():
    # W at 40084 with its SF at 40085; filler points push W to the end of a 125-register window
    filler = pts(*range(39961, 40084, 1))
    w = Point(channel="w", address=40084, type="int16", scale_factor={"address": 40085})
    plan = plan_requests(filler + [w], max_gap=16)
    holding_w = [r for r in plan if any(p.channel == "w" for p in r.points)][0]
    assert holding_w.start <= 40084 and holding_w.start + holding_w.count >= 40086
    assert all(r.count <= 125 for r in plan)


def test_split_halves_until_single_spans():
    (req,) = plan_requests(pts(0, 1, 2, 3), max_gap=16)
    halves = split(req)
    assert [(r.start, r.count) for r in halves] == [(0, 2), (2, 2)]
    single = split(halves[0])[0]
    assert split(single) == [single]
