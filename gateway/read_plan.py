"""Plan the fewest Modbus requests that cover a device's points.

Neighbouring points of one table merge into one read while the gap between them is
at most ``max_gap`` and the read stays within the protocol limit (125 registers,
2000 bits). A point and its scale-factor register form one indivisible span, so a
value is never decoded with a scale factor from another moment. A device that
rejects a merged read gets it split in halves, down to single spans, and the split
is kept for the following cycles.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.config.profile import MAX_READ_REGISTERS, Point

MAX_BITS = 2000


@dataclass(frozen=True)
class Span:
    """Registers that must be read together: a point and its scale factor."""

    table: str
    start: int
    end: int  # exclusive
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Request:
    table: str
    start: int
    count: int
    spans: tuple[Span, ...]

    @property
    def points(self) -> list[Point]:
        return [p for s in self.spans for p in s.points]


def limit(table: str) -> int:
    return MAX_BITS if table in ("coil", "discrete") else MAX_READ_REGISTERS


def span_of(point: Point) -> Span:
    """The registers of ``point`` and its scale factor (the profile keeps them within one read)."""
    start, end = point.address, point.address + point.registers
    if point.scale_factor is not None:
        start = min(start, point.scale_factor.address)
        end = max(end, point.scale_factor.address + 1)
    return Span(point.table, start, end, (point,))


def _request(spans: list[Span]) -> Request:
    start = min(s.start for s in spans)
    end = max(s.end for s in spans)
    return Request(spans[0].table, start, end - start, tuple(spans))


def plan_requests(points: list[Point], max_gap: int) -> list[Request]:
    """Group ``points`` into as few requests as the gap and size limits allow."""
    by_table: dict[str, list[Span]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(span_of(p))
    requests: list[Request] = []
    for table in sorted(by_table):
        spans = sorted(by_table[table], key=lambda s: (s.start, s.end))
        group = [spans[0]]
        start, end = spans[0].start, spans[0].end
        for s in spans[1:]:
            if s.start - end <= max_gap and max(end, s.end) - start <= limit(table):
                group.append(s)
                end = max(end, s.end)
            else:
                requests.append(_request(group))
                group, start, end = [s], s.start, s.end
        requests.append(_request(group))
    return requests


def split(request: Request) -> list[Request]:
    """Halve a rejected request by its spans; a single span cannot be split further."""
    if len(request.spans) < 2:
        return [request]
    mid = len(request.spans) // 2
    return [_request(list(request.spans[:mid])), _request(list(request.spans[mid:]))]
