"""Simulated devices: a fleet's speeds, bandwidths, availability and dropouts on a virtual clock.

A `SystemModel` answers, for client `i`: how fast it is (`device(i)`, a `DeviceProfile`), whether
it is online at simulated time `t` (`online(i, t)`), and whether it drops out of attempt `a` of
round `r` (`drops(r, a, i)`). The server (`server.py`) turns each task's real work and real
payload sizes into simulated seconds with `DeviceProfile.task_seconds`:

    duration = bytes_down / down_bytes_per_s        (the global model, as the download codecs made it)
             + samples / samples_per_s              (FitConfig.samples: epochs × examples, or steps × batch)
             + bytes_up / up_bytes_per_s            (the encoded update: compression shortens rounds)

Fleets (`[systems] profile`, built by `build_system`; every draw from the run seed through the
"systems" stream of `seeding.rng`, one named sub-stream per attribute so that changing one knob
never moves another):

- `uniform` (default): every device alike — `speed_median` samples/s (100), the `4g` tier's
  bandwidth (20 Mbit/s down, 5 up), always online; it drops out only when `dropout` > 0.
- `heterogeneous`: speed log-normal, `speed_median · exp(speed_sigma · z)` with z ~ N(0, 1) (so
  `speed_median` is the median and `speed_sigma` the standard deviation of log-speed); bandwidth
  from the tiers below, mixed in the fractions `tier_mix` (wifi, 4g, 3g); with `diurnal = true`
  each device is online `online_hours` a day in one window that starts at a uniformly drawn
  time of day (the window repeats every 86 400 s and may wrap past midnight).
- `trace`: one row per client read from the CSV file `trace` (format below).

`dropout` (every profile) is the probability that a client that was online at the start of an
attempt drops out before its result arrives: a Bernoulli draw per (round, attempt, client),
stream "systems" keyed by (stable_hash("dropout"), round, attempt, client) — the same draw on
every engine, whatever else ran.

Bandwidth tiers (Mbit/s, 1 Mbit = 10⁶ bits; roughly median measured speeds of each access type):

    tier    down   up     default share (tier_mix)
    wifi    50     20     0.5
    4g      20     5      0.3
    3g      2      0.5    0.2

Trace CSV (`profile = "trace"`): a header line, then one line per client; blank lines and lines
starting with `#` are skipped. Columns, in any order:

    client_id       integer in [0, number of clients); every client exactly once
    samples_per_s   training speed, > 0
    down_mbps       download bandwidth in Mbit/s, > 0
    up_mbps         upload bandwidth in Mbit/s, > 0
    availability    optional column: when the device is online, as START-END intervals in
                    simulated seconds separated by `;` (e.g. `0-3600;7200-10800`), sorted and
                    not overlapping, each [START, END); empty or `always` = always online,
                    `never` = never online. By default the intervals are absolute (after the
                    last one the device stays offline); with `trace_period_s` > 0 they repeat
                    with that period (e.g. 86400 for a one-day trace) and must lie within it.

e.g.

    client_id,samples_per_s,down_mbps,up_mbps,availability
    0,120,50,20,always
    1,15.5,2,0.5,0-3600;43200-50400

A malformed trace (unreadable, a missing or unknown column, a wrong number of fields, a
non-positive speed or bandwidth, an id that is not a client of the data, a duplicate or
missing client, a bad interval) is a `DataError` naming the file and the line, raised before
training starts.

Availability is checked at the start of each attempt (a client offline then fails as
"unavailable"); a device that goes offline mid-round is what `dropout` models.

Scale: `uniform` holds one profile whatever the number of clients; `heterogeneous` holds one array
per attribute (`DrawnFleet`, about 17 bytes a device) and makes a client's DeviceProfile when asked,
so a round touches only its sampled clients — except that with diurnal windows, finding who is
online (the `available` and `oort` samplers, or a server waiting for the first device) is one
vectorised pass over the windows. A trace fleet (`Fleet`) keeps one DeviceProfile object per line.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import TIER_NAMES
from .errors import DataError
from .seeding import rng, stable_hash

MBIT = 1e6 / 8  # bytes per second in one Mbit/s
DAY_S = 86400.0
# Bandwidth tiers: (down, up) in Mbit/s, in the order of systems.tier_mix.
TIERS: dict[str, tuple[float, float]] = {"wifi": (50.0, 20.0), "4g": (20.0, 5.0), "3g": (2.0, 0.5)}
DEFAULT_TIER_MIX = (0.5, 0.3, 0.2)
_TIER_NAMES = tuple(TIERS)
assert _TIER_NAMES == TIER_NAMES, "fedstack.config.TIER_NAMES names these tiers"
TRACE_COLUMNS = ("client_id", "samples_per_s", "down_mbps", "up_mbps", "availability")
REQUIRED_COLUMNS = TRACE_COLUMNS[:4]


@dataclass(frozen=True)
class Availability:
    """When a device is online: [start, end) intervals in simulated seconds, or always (`starts` None).

    With `period` > 0 the intervals (within [0, period]) repeat every `period` seconds.
    """

    starts: tuple[float, ...] | None = None
    ends: tuple[float, ...] | None = None
    period: float = 0.0

    @classmethod
    def intervals(cls, pairs, period: float = 0.0) -> "Availability":
        """From [(start, end), ...], checked: finite, 0 ≤ start < end, sorted, disjoint, within the period."""
        starts, ends, last = [], [], 0.0
        for start, end in pairs:
            start, end = float(start), float(end)
            if not (math.isfinite(start) and math.isfinite(end)):
                raise ValueError(f"interval {start:g}-{end:g} is not finite")
            if start < 0 or end <= start:
                raise ValueError(f"interval {start:g}-{end:g} must have 0 <= start < end")
            if start < last:
                raise ValueError(f"interval {start:g}-{end:g} overlaps or precedes the one before")
            if period > 0 and end > period:
                raise ValueError(f"interval {start:g}-{end:g} runs past the period of {period:g} s")
            starts.append(start)
            ends.append(end)
            last = end
        return cls(tuple(starts), tuple(ends), float(period))

    @classmethod
    def diurnal(cls, start_s: float, length_s: float, day: float = DAY_S) -> "Availability":
        """Online `length_s` seconds a day from `start_s` (time of day), wrapping past midnight."""
        if length_s >= day:
            return ALWAYS
        start = float(start_s) % day
        end = start + length_s
        if end <= day:
            return cls.intervals([(start, end)], day)
        return cls.intervals([(0.0, end - day), (start, day)], day)

    @property
    def always(self) -> bool:
        return self.starts is None

    def online(self, t: float) -> bool:
        """Whether the device is online at time `t`."""
        if self.starts is None:
            return True
        if self.period > 0:
            t = t % self.period
        i = bisect.bisect_right(self.starts, t) - 1
        return i >= 0 and t < self.ends[i]

    def next_online(self, t: float) -> float:
        """The first time ≥ `t` at which the device is online (`t` itself if it is); inf if never."""
        if self.online(t):
            return t
        if not self.starts:
            return math.inf
        if self.period > 0:
            phase = t % self.period
            base = t - phase
            i = bisect.bisect_right(self.starts, phase)
            return base + self.starts[i] if i < len(self.starts) else base + self.period + self.starts[0]
        i = bisect.bisect_right(self.starts, t)
        return self.starts[i] if i < len(self.starts) else math.inf


ALWAYS = Availability()


@dataclass(frozen=True)
class DeviceProfile:
    """One device: speed, bandwidth, when it is online, how likely it drops out of a round."""

    samples_per_s: float = 100.0
    down_bytes_per_s: float = 20e6 / 8  # 20 Mbit/s
    up_bytes_per_s: float = 5e6 / 8  # 5 Mbit/s
    availability: Availability = ALWAYS
    dropout: float = 0.0
    tier: str = ""  # the bandwidth tier it was drawn from, if any

    def task_seconds(self, samples: int, bytes_down: int, bytes_up: int) -> float:
        """Download the model, train on `samples` examples, upload the update."""
        return (bytes_down / self.down_bytes_per_s + samples / self.samples_per_s
                + bytes_up / self.up_bytes_per_s)

    def steps_within(self, seconds: float, bytes_down: int, bytes_up: int, samples_per_step: int) -> int:
        """The most local steps of `samples_per_step` examples that fit, with the transfers, in `seconds`.

        Whatever it returns, `task_seconds(steps · samples_per_step, bytes_down, bytes_up) <= seconds`
        (checked with the same arithmetic the server judges a deadline with); 0 when none fits.
        """
        if samples_per_step <= 0:
            return 0
        compute = seconds - bytes_down / self.down_bytes_per_s - bytes_up / self.up_bytes_per_s
        steps = max(0, int(math.floor(compute * self.samples_per_s / samples_per_step)))
        while steps > 0 and self.task_seconds(steps * samples_per_step, bytes_down, bytes_up) > seconds:
            steps -= 1  # floating-point rounding: never plan past the deadline
        return steps


def dropout_rng(seed: int, rnd: int, attempt: int, client_id: int) -> np.random.Generator:
    """The stream of the dropout draw of one client in one attempt of one round."""
    return rng(seed, "systems", stable_hash("dropout"), rnd, attempt, client_id)


class SystemModel:
    """A fleet of devices. Subclasses say `device(client_id)`; the rest follows from the profiles."""

    seed: int = 0
    num_clients: int | None = None  # the fleet's size when it has one (None: as many devices as asked for)

    def device(self, client_id: int) -> DeviceProfile:
        raise NotImplementedError

    def online(self, client_id: int, t: float) -> bool:
        return self.device(client_id).availability.online(t)

    def online_ids(self, t: float, num_clients: int) -> list[int]:
        """The ids (ascending) of the clients online at time `t`."""
        return [i for i in range(num_clients) if self.online(i, t)]

    def everyone_online(self, t: float) -> bool:
        """Whether every client is surely online at time `t`, known without looking at each (False: ask online_ids)."""
        return False

    def any_online(self, t: float, num_clients: int) -> bool:
        return any(self.online(i, t) for i in range(num_clients))

    def next_online(self, t: float, num_clients: int) -> float:
        """The first time ≥ `t` at which some client is online; inf if none ever is."""
        return min((self.device(i).availability.next_online(t) for i in range(num_clients)), default=math.inf)

    def drops(self, rnd: int, attempt: int, client_id: int) -> bool:
        """Whether the client drops out of this attempt of this round (seeded; no draw when it never drops)."""
        return self.drop_point(rnd, attempt, client_id) is not None

    def drop_point(self, rnd: int, attempt: int, client_id: int) -> float | None:
        """How far into its task (a fraction in [0, 1)) the client drops out, or None if it does not.

        The first draw of the stream decides whether it drops, the second where.
        """
        p = self.device(client_id).dropout
        if p <= 0:
            return None
        draws = dropout_rng(self.seed, rnd, attempt, client_id)
        if draws.random() >= p:
            return None
        return float(draws.random())


class UniformSystem(SystemModel):
    """Every client has the same DeviceProfile: the default fleet of equal devices, never failing."""

    def __init__(self, profile: DeviceProfile = DeviceProfile(), seed: int = 0):
        self.profile = profile
        self.seed = seed

    def device(self, client_id: int) -> DeviceProfile:
        return self.profile

    def online_ids(self, t: float, num_clients: int) -> list[int]:
        return list(range(num_clients)) if self.profile.availability.online(t) else []

    def everyone_online(self, t: float) -> bool:
        return self.profile.availability.online(t)

    def any_online(self, t: float, num_clients: int) -> bool:
        return num_clients > 0 and self.profile.availability.online(t)

    def next_online(self, t: float, num_clients: int) -> float:
        return self.profile.availability.next_online(t) if num_clients else math.inf


class Fleet(SystemModel):
    """One DeviceProfile per client (read from a trace, or given): a Python object per device."""

    def __init__(self, devices: list[DeviceProfile], seed: int = 0):
        self.devices = list(devices)
        self.seed = seed
        self._always = all(d.availability.always for d in self.devices)

    @property
    def num_clients(self) -> int:
        return len(self.devices)

    def device(self, client_id: int) -> DeviceProfile:
        return self.devices[client_id]

    def everyone_online(self, t: float) -> bool:
        return self._always


class DrawnFleet(Fleet):
    """The `heterogeneous` fleet as one array per attribute: a million devices cost a few arrays of N.

    `device(i)` builds client i's DeviceProfile when asked; which clients are online at a time is
    one vectorised test over the daily windows, O(N) NumPy (only with diurnal windows; without,
    every device is always online and nothing looks at the N devices).
    """

    def __init__(self, speeds: np.ndarray, tiers: np.ndarray, window_starts: np.ndarray | None,
                 online_s: float, dropout: float, seed: int = 0):  # no Fleet.__init__: no list of devices
        self.speeds = np.asarray(speeds, dtype=np.float64)
        self.tiers = np.asarray(tiers, dtype=np.int8)  # index into TIERS
        # Windows of a day or more are ALWAYS, as Availability.diurnal makes them.
        self.window_starts = None if window_starts is None or online_s >= DAY_S else \
            np.asarray(window_starts, dtype=np.float64)
        self.online_s = float(online_s)
        self.dropout = dropout
        self.seed = seed
        if self.window_starts is not None:  # each window's [start, end) within the day, as Availability.diurnal
            self._start = self.window_starts % DAY_S
            self._end = self._start + self.online_s

    @property
    def num_clients(self) -> int:
        return len(self.speeds)

    @property
    def devices(self) -> list[DeviceProfile]:
        """Every device's profile (O(N) objects: for inspection and tests, not for rounds)."""
        return [self.device(i) for i in range(self.num_clients)]

    def device(self, client_id: int) -> DeviceProfile:
        name = _TIER_NAMES[self.tiers[client_id]]
        down, up = TIERS[name]
        window = ALWAYS if self.window_starts is None else \
            Availability.diurnal(float(self.window_starts[client_id]), self.online_s)
        return DeviceProfile(float(self.speeds[client_id]), down * MBIT, up * MBIT, window, self.dropout, name)

    def everyone_online(self, t: float) -> bool:
        return self.window_starts is None

    def _online_mask(self, t: float, num_clients: int) -> np.ndarray:
        """Which of the first `num_clients` devices are online at `t`: Availability.diurnal's test, vectorised."""
        start, end = self._start[:num_clients], self._end[:num_clients]
        phase = t % DAY_S
        # A window past midnight is [0, end - DAY_S) and [start, DAY_S).
        return np.where(end <= DAY_S, (start <= phase) & (phase < end), (phase < end - DAY_S) | (start <= phase))

    def online_ids(self, t: float, num_clients: int) -> np.ndarray:
        if self.window_starts is None:
            return np.arange(num_clients, dtype=np.int64)
        return np.flatnonzero(self._online_mask(t, num_clients))

    def any_online(self, t: float, num_clients: int) -> bool:
        return num_clients > 0 and (self.window_starts is None or bool(self._online_mask(t, num_clients).any()))

    def next_online(self, t: float, num_clients: int) -> float:
        if not num_clients:
            return math.inf
        if self.any_online(t, num_clients):
            return t
        # Every device is offline: each opens its window later today (phase before its start) or tomorrow.
        start = self._start[:num_clients]
        phase = t % DAY_S
        base = t - phase
        return float(np.where(phase < start, base + start, base + DAY_S + start).min())


def heterogeneous(num_clients: int, seed: int, *, speed_median: float = 100.0, speed_sigma: float = 1.0,
                  tier_mix=DEFAULT_TIER_MIX, dropout: float = 0.0, diurnal: bool = False,
                  online_hours: float = 8.0) -> DrawnFleet:
    """A fleet of log-normal speeds, bandwidth tiers mixed as `tier_mix`, optional diurnal windows."""
    mix = np.asarray(tier_mix, dtype=np.float64)
    if mix.shape != (len(TIERS),) or (mix < 0).any() or not math.isclose(mix.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"tier_mix must be {len(TIERS)} non-negative fractions ({', '.join(TIERS)}) summing "
                         f"to 1, got {list(tier_mix)}")
    z = rng(seed, "systems", stable_hash("speed")).standard_normal(num_clients)
    speeds = speed_median * np.exp(speed_sigma * z)
    tiers = rng(seed, "systems", stable_hash("tier")).choice(len(TIERS), size=num_clients, p=mix / mix.sum())
    starts = rng(seed, "systems", stable_hash("diurnal")).uniform(0.0, DAY_S, num_clients) if diurnal else None
    return DrawnFleet(speeds, tiers, starts, online_hours * 3600.0, dropout, seed)


def read_trace(path: str | Path, num_clients: int, period: float = 0.0) -> list[DeviceProfile]:
    """One DeviceProfile per client from a trace CSV (format in this module's docstring), or a DataError."""
    path = Path(path)
    lines = _trace_lines(path)
    header = _trace_header(path, *lines[0])
    devices: dict[int, DeviceProfile] = {}
    first_line: dict[int, int] = {}
    for n, line in lines[1:]:
        row = _trace_row(path, n, line, header)
        cid = _trace_client_id(path, n, row, num_clients)
        if cid in devices:
            raise _trace_error(path, n, f"client {cid} appears twice (also on line {first_line[cid]})")
        devices[cid] = _trace_device(path, n, row, period)
        first_line[cid] = n
    absent = [i for i in range(num_clients) if i not in devices]
    if absent:
        shown = ", ".join(map(str, absent[:5])) + (", ..." if len(absent) > 5 else "")
        raise DataError(f"{path}: no line for client{'s' if len(absent) > 1 else ''} {shown} "
                        f"({len(absent)} of the data's {num_clients} clients); the trace needs one line per client")
    return [devices[i] for i in range(num_clients)]


def _trace_error(path: Path, line: int, message: str) -> DataError:
    """A DataError naming the trace file and the line at fault."""
    return DataError(f"{path}, line {line}: {message}")


def _trace_lines(path: Path) -> list[tuple[int, str]]:
    """The trace's (line number, text) pairs, blank lines and comments left out; at least the header."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the device trace ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: the device trace is not a text (CSV) file") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"{path}: empty device trace; expected a header line {','.join(REQUIRED_COLUMNS)}"
                        f"[,availability] and one line per client")
    return lines


def _trace_header(path: Path, at: int, header_line: str) -> list[str]:
    """The column names of the header on line `at`: known ones only, the required ones all, none twice."""
    header = [h.strip() for h in next(csv.reader([header_line]))]
    unknown = [h for h in header if h not in TRACE_COLUMNS]
    if unknown:
        raise _trace_error(path, at, f"unknown column {unknown[0]!r}; the columns are {', '.join(TRACE_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise _trace_error(path, at, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                     f"in the header")
    if len(set(header)) != len(header):
        raise _trace_error(path, at, "a column appears twice in the header")
    return header


def _trace_row(path: Path, n: int, line: str, header: list[str]) -> dict[str, str]:
    """Line `n`'s cells by column name; as many cells as the header has columns."""
    cells = [c.strip() for c in next(csv.reader([line]))]
    if len(cells) != len(header):
        raise _trace_error(path, n, f"{len(cells)} fields, but the header has {len(header)}")
    return dict(zip(header, cells))


def _trace_client_id(path: Path, n: int, row: dict[str, str], num_clients: int) -> int:
    """The row's client id: an integer naming one of the data's `num_clients` clients."""
    try:
        cid = int(row["client_id"])
    except ValueError:
        raise _trace_error(path, n, f"client_id {row['client_id']!r} is not an integer") from None
    if not 0 <= cid < num_clients:
        raise _trace_error(path, n, f"client id {cid} is not a client of the data (ids 0..{num_clients - 1})")
    return cid


def _trace_device(path: Path, n: int, row: dict[str, str], period: float) -> DeviceProfile:
    """The device a row describes: positive speed and bandwidths, and its availability."""
    values = {}
    for column in ("samples_per_s", "down_mbps", "up_mbps"):
        try:
            values[column] = float(row[column])
        except ValueError:
            raise _trace_error(path, n, f"{column} {row[column]!r} is not a number") from None
        if not (math.isfinite(values[column]) and values[column] > 0):
            raise _trace_error(path, n, f"{column} must be a positive number, got {row[column]}")
    try:
        availability = parse_availability(row.get("availability", ""), period)
    except ValueError as exc:
        raise _trace_error(path, n, f"availability: {exc}") from None
    return DeviceProfile(values["samples_per_s"], values["down_mbps"] * MBIT, values["up_mbps"] * MBIT, availability)


def parse_availability(text: str, period: float = 0.0) -> Availability:
    """`0-3600;7200-10800` → Availability; empty or `always` → ALWAYS; `never` → never online."""
    text = text.strip()
    if text in ("", "always"):
        return ALWAYS
    if text == "never":
        return Availability((), (), period)
    pairs = []
    for part in text.split(";"):
        part = part.strip()
        start, sep, end = part.partition("-")
        try:
            if not sep or not start.strip():
                raise ValueError
            pairs.append((float(start), float(end)))
        except ValueError:
            raise ValueError(f"{part!r} is not START-END (seconds, e.g. 0-3600)") from None
    return Availability.intervals(pairs, period)


def from_trace(path: str | Path, num_clients: int, seed: int = 0, *, dropout: float = 0.0,
               period: float = 0.0) -> Fleet:
    """A fleet replaying a trace file; every device drops out with probability `dropout`."""
    devices = read_trace(path, num_clients, period)
    if dropout:
        devices = [DeviceProfile(d.samples_per_s, d.down_bytes_per_s, d.up_bytes_per_s, d.availability, dropout)
                   for d in devices]
    return Fleet(devices, seed)


def build_system(config, num_clients: int, seed: int) -> SystemModel:
    """The fleet a `[systems]` config section describes (a SystemsConfig), for `num_clients` clients."""
    if config.profile == "uniform":
        return UniformSystem(DeviceProfile(samples_per_s=config.speed_median, dropout=config.dropout), seed)
    if config.profile == "heterogeneous":
        return heterogeneous(num_clients, seed, speed_median=config.speed_median, speed_sigma=config.speed_sigma,
                             tier_mix=config.tier_mix, dropout=config.dropout, diurnal=config.diurnal,
                             online_hours=config.online_hours)
    if config.profile == "trace":
        return from_trace(config.trace, num_clients, seed, dropout=config.dropout, period=config.trace_period_s)
    raise ValueError(f"unknown systems.profile {config.profile!r}")
