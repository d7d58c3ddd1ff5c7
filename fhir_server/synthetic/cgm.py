"""CGM sensors (wear sessions, gaps) and the fast NDJSON rendering of their readings.

Readings are most of the output (288 a day per CGM patient), so they are written from a
template: the resource is serialised once by orjson with placeholders, split, and each
reading is three string joins. `orjson.loads` of a line gives back exactly the dict the
other resources are built as, and `orjson.dumps` of it gives back the same bytes.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

import orjson

from . import codes
from .resources import LAB, quantity, ref

SLOTS_PER_DAY = 288  # one reading every 5 minutes
SENSOR_LOW, SENSOR_HIGH = 40, 400  # outside: "<40" / ">400", as sensors report


@dataclass(slots=True)
class SensorSession:
    device_id: str
    serial: str
    manufacturer: str
    model: str
    start: int  # slot of insertion, from the window's first 00:00Z (negative: before it)
    end: int  # slot after the last reading (exclusive)
    warmup: int  # slots without readings after insertion
    phase: int  # seconds after the 5-minute grid at which this sensor reads (0..299)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [start, end) signal losses

    def reading_runs(self, n_slots: int) -> Iterator[tuple[int, int]]:
        """Runs [first, stop) of consecutive slots with a reading, inside [0, n_slots)."""
        pos = max(self.start + self.warmup, 0)
        stop = min(self.end, n_slots)
        for g0, g1 in self.gaps:
            if g1 <= pos:
                continue
            if min(g0, stop) > pos:
                yield pos, min(g0, stop)
            pos = max(pos, g1)
        if stop > pos:
            yield pos, stop


_SERIAL_CHARS = string.ascii_uppercase + string.digits


def plan_sessions(
    rng: random.Random,
    seed: int,
    index: int,
    n_slots: int,
    model: tuple[str, str, int, int, int],
) -> list[SensorSession]:
    """Consecutive sensors over the window: replaced at end of life, sometimes late or early.

    Rates (choices, in line with published CGM wear data of about 85-95 % capture): 5 % of
    sensors fail early, 15 % of replacements come 2-36 h late, and on about one day in five
    the signal is lost for 15 min to 4 h.
    """
    manufacturer, name, life_days, warmup_min, _weight = model
    life = life_days * SLOTS_PER_DAY
    warmup = warmup_min // 5
    sessions: list[SensorSession] = []
    start = -rng.randrange(life)
    k = 0
    while start < n_slots:
        end = start + life
        if rng.random() < 0.05:
            end = start + rng.randrange(life // 4, life)
        gaps = []
        for day in range(start // SLOTS_PER_DAY, end // SLOTS_PER_DAY + 1):
            if rng.random() < 0.2:
                g0 = day * SLOTS_PER_DAY + rng.randrange(SLOTS_PER_DAY)
                gaps.append((g0, g0 + rng.randint(3, 48)))
        prefix = "0M" if manufacturer.startswith("Abbott") else "DX"
        serial = prefix + "".join(rng.choice(_SERIAL_CHARS) for _ in range(9))
        sessions.append(SensorSession(
            device_id=f"dev-{seed}-{index}-{k}", serial=serial, manufacturer=manufacturer,
            model=name, start=start, end=end, warmup=warmup, phase=rng.randrange(300),
            gaps=gaps,
        ))
        k += 1
        delay = rng.randint(0, 6) if rng.random() < 0.85 else rng.randint(24, 432)
        start = end + delay
    # Sessions that end before the window opens give no reading: drop them.
    return [s for s in sessions if s.end > 0]


class CGMRenderer:
    """Renders a patient's CGM readings as NDJSON lines (str, one per reading)."""

    _ID, _TS, _VAL = "@@ID@@", "@@TS@@", "@@VAL@@"

    def __init__(self, seed: int, index: int, pid: str, first_day: date, days: int) -> None:
        self.id_prefix = f"cgm-{seed}-{index}-"
        self.pid = pid
        self.dates = [(first_day + timedelta(days=d)).isoformat() + "T" for d in range(days)]

    def _template(self, device_id: str, value: object, comparator: str | None) -> list[str]:
        code, display, unit = codes.CGM_GLUCOSE
        resource = {
            "resourceType": "Observation",
            "id": self._ID,
            "meta": {"profile": [codes.PROFILE_CGM]},
            "status": "final",
            "category": LAB,
            "code": {"coding": [{"system": codes.LOINC, "code": code, "display": display}]},
            "subject": ref("Patient", self.pid),
            "effectiveDateTime": self._TS,
            "valueQuantity": quantity(value, unit, comparator),  # type: ignore[arg-type]
            "device": ref("Device", device_id),
        }
        text = orjson.dumps(resource).decode()
        text = text.replace(f'"{self._VAL}"', self._VAL)  # the value is a JSON number
        head, rest = text.split(self._ID)
        mid, tail = rest.split(self._TS)
        return [head, mid, tail + "\n"]

    def lines(self, session: SensorSession, curve: list[float]) -> list[str]:
        head, mid, tail = self._template(session.device_id, self._VAL, None)
        before_value, after_value = tail.split(self._VAL)
        low = self._template(session.device_id, SENSOR_LOW, "<")[2]
        high = self._template(session.device_id, SENSOR_HIGH, ">")[2]
        head = head + self.id_prefix
        times = []
        for k in range(SLOTS_PER_DAY):
            h, rem = divmod(k * 300 + session.phase, 3600)
            times.append(f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}Z")
        out: list[str] = []
        append = out.append
        for first, stop in session.reading_runs(len(curve)):
            day, k = divmod(first, SLOTS_PER_DAY)
            date_mid = mid + self.dates[day]
            for slot in range(first, stop):
                value = int(curve[slot] + 0.5)
                if SENSOR_LOW <= value <= SENSOR_HIGH:
                    append(f"{head}{slot}{date_mid}{times[k]}{before_value}{value}{after_value}")
                else:
                    end = low if value < SENSOR_LOW else high
                    append(f"{head}{slot}{date_mid}{times[k]}{end}")
                k += 1
                if k == SLOTS_PER_DAY:  # next UTC day
                    k, day = 0, day + 1
                    if day < len(self.dates):
                        date_mid = mid + self.dates[day]
        return out
