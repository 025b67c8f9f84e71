import math

import numpy as np
import pytest

from fedstack.plan import load_config
from fedstack.errors import ConfigError, DataError
from fedstack.systems import (ALWAYS, DAY_S, MBIT, TIERS, Availability, DeviceProfile, Fleet, UniformSystem,
                              build_system, heterogeneous, read_trace)

HOUR = 3600.0


def test_task_duration_is_download_plus_compute_plus_upload():
    device = DeviceProfile(samples_per_s=50, down_bytes_per_s=1000, up_bytes_per_s=500)
    # 4000 B down at 1000 B/s = 4 s; 100 samples at 50/s = 2 s; 1000 B up at 500 B/s = 2 s
    assert device.task_seconds(100, 4000, 1000) == 8.0
    assert device.task_seconds(0, 0, 0) == 0.0


def test_the_default_fleet_is_todays_uniform_device():
    system = build_system(load_config().systems, 10, seed=0)
    assert isinstance(system, UniformSystem)
    assert system.device(7) == DeviceProfile()  # 100 samples/s, 20 Mbit/s down, 5 up, always on, never drops
    assert not any(system.drops(r, 0, c) for r in range(1, 20) for c in range(10))
    assert system.online_ids(12345.0, 4) == [0, 1, 2, 3]


def test_steps_within_never_plans_past_the_deadline():
    device = DeviceProfile(samples_per_s=3, down_bytes_per_s=7, up_bytes_per_s=11)
    for seconds in np.linspace(0.1, 20, 97):
        steps = device.steps_within(seconds, 5, 13, samples_per_step=2)
        assert device.task_seconds(steps * 2, 5, 13) <= seconds or steps == 0
        assert device.task_seconds((steps + 1) * 2, 5, 13) > seconds
    # 10 s − 1 s down − 1 s up = 8 s of compute at 3 samples/s = 24 samples = 12 steps of 2
    assert DeviceProfile(3, 10, 10).steps_within(10.0, 10, 10, 2) == 12
    assert DeviceProfile(3, 10, 10).steps_within(1.5, 10, 10, 2) == 0


def test_heterogeneous_speeds_are_log_normal_around_the_median():
    fleet = heterogeneous(20000, seed=3, speed_median=80.0, speed_sigma=1.0)
    speeds = np.array([fleet.device(i).samples_per_s for i in range(fleet.num_clients)])
    assert np.median(speeds) == pytest.approx(80.0, rel=0.04)
    assert np.log(speeds).std() == pytest.approx(1.0, abs=0.02)
    assert np.log(speeds).mean() == pytest.approx(math.log(80.0), abs=0.03)
    narrow = heterogeneous(20000, seed=3, speed_median=80.0, speed_sigma=0.25)
    assert np.log([narrow.device(i).samples_per_s for i in range(20000)]).std() == pytest.approx(0.25, abs=0.01)
    same = heterogeneous(20000, seed=3, speed_median=80.0, speed_sigma=0.0)
    assert {same.device(i).samples_per_s for i in range(100)} == {80.0}


def test_heterogeneous_tiers_follow_the_mix_and_their_documented_bandwidths():
    mix = (0.2, 0.5, 0.3)
    fleet = heterogeneous(20000, seed=5, tier_mix=mix)
    tiers = [fleet.device(i).tier for i in range(fleet.num_clients)]
    for name, share in zip(TIERS, mix):
        assert tiers.count(name) / len(tiers) == pytest.approx(share, abs=0.015)
    wifi = next(fleet.device(i) for i in range(100) if fleet.device(i).tier == "wifi")
    three_g = next(fleet.device(i) for i in range(100) if fleet.device(i).tier == "3g")
    assert (wifi.down_bytes_per_s, wifi.up_bytes_per_s) == (50e6 / 8, 20e6 / 8)
    assert (three_g.down_bytes_per_s, three_g.up_bytes_per_s) == (2e6 / 8, 0.5e6 / 8)
    only_4g = heterogeneous(50, seed=5, tier_mix=(0, 1, 0))
    assert {only_4g.device(i).tier for i in range(50)} == {"4g"}
    with pytest.raises(ValueError, match="tier_mix"):
        heterogeneous(5, seed=0, tier_mix=(0.5, 0.5, 0.5))


def test_heterogeneous_fleets_are_deterministic_and_each_knob_has_its_own_stream():
    a = heterogeneous(200, seed=1, dropout=0.2, diurnal=True)
    b = heterogeneous(200, seed=1, dropout=0.2, diurnal=True)
    assert a.devices == b.devices
    assert heterogeneous(200, seed=2).devices != heterogeneous(200, seed=1).devices
    # changing the tier mix or switching diurnal windows on does not move anyone's speed
    other = heterogeneous(200, seed=1, tier_mix=(0.1, 0.1, 0.8))
    assert [d.samples_per_s for d in other.devices] == [d.samples_per_s for d in a.devices]
    plain = heterogeneous(200, seed=1)
    assert [d.samples_per_s for d in plain.devices] == [d.samples_per_s for d in a.devices]
    assert all(d.availability is ALWAYS for d in plain.devices)


def test_dropout_draws_are_seeded_and_have_the_right_rate():
    fleet = heterogeneous(200, seed=4, dropout=0.25)
    draws = [fleet.drops(r, a, c) for r in range(1, 6) for a in range(2) for c in range(200)]
    again = [fleet.drops(r, a, c) for r in range(1, 6) for a in range(2) for c in range(200)]
    assert draws == again
    assert np.mean(draws) == pytest.approx(0.25, abs=0.035)
    assert draws != [heterogeneous(200, seed=5, dropout=0.25).drops(r, a, c)
                     for r in range(1, 6) for a in range(2) for c in range(200)]


def test_diurnal_windows_by_hand():
    night = Availability.diurnal(22 * HOUR, 8 * HOUR)  # 22:00 → 06:00, wrapping past midnight
    for hour, online in [(22, True), (23.5, True), (0, True), (5.99, True), (6, False), (12, False),
                         (21.99, False)]:
        for day in (0, 1, 30):
            assert night.online(day * DAY_S + hour * HOUR) is online, (day, hour)
    assert night.next_online(12 * HOUR) == 22 * HOUR
    assert night.next_online(DAY_S + 7 * HOUR) == DAY_S + 22 * HOUR
    assert night.next_online(3 * HOUR) == 3 * HOUR
    morning = Availability.diurnal(8 * HOUR, 2 * HOUR)
    assert morning.online(9 * HOUR) and not morning.online(10 * HOUR)
    assert morning.next_online(11 * HOUR) == DAY_S + 8 * HOUR  # tomorrow's window
    assert Availability.diurnal(5 * HOUR, 24 * HOUR) is ALWAYS


def test_diurnal_fleets_are_online_their_share_of_the_day():
    fleet = heterogeneous(4000, seed=2, diurnal=True, online_hours=6)
    for t in (0.0, 7.5 * HOUR, 3 * DAY_S + 19 * HOUR):
        assert len(fleet.online_ids(t, 4000)) / 4000 == pytest.approx(0.25, abs=0.03)
    assert fleet.next_online(0.0, 4000) == 0.0


def test_explicit_intervals_absolute_and_periodic():
    a = Availability.intervals([(10, 20), (30, 40)])
    assert [a.online(t) for t in (0, 10, 19.9, 20, 25, 30, 39, 40, 1e6)] == \
        [False, True, True, False, False, True, True, False, False]
    assert (a.next_online(0), a.next_online(15), a.next_online(25), a.next_online(45)) == (10, 15, 30, math.inf)
    p = Availability.intervals([(10, 20)], period=100)
    assert p.online(215) and not p.online(225)
    assert p.next_online(225) == 310
    never = Availability((), ())
    assert not never.online(0) and never.next_online(0) == math.inf
    for bad in ([(5, 5)], [(-1, 3)], [(10, 20), (15, 30)], [(0, math.inf)]):
        with pytest.raises(ValueError):
            Availability.intervals(bad)
    with pytest.raises(ValueError, match="period"):
        Availability.intervals([(0, 150)], period=100)


def _trace(tmp_path, text, name="fleet.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_trace_is_read_with_units_and_availability(tmp_path):
    path = _trace(tmp_path, "# a measured fleet\n"
                            "up_mbps,client_id,samples_per_s,down_mbps,availability\n"
                            "0.5,1,15.5,2,0-3600;7200-10800\n"
                            "\n"
                            "20,0,120,50,always\n"
                            "5,2,1e3,20,\n")
    devices = read_trace(path, 3)
    assert devices[0] == DeviceProfile(120.0, 50 * MBIT, 20 * MBIT, ALWAYS)
    assert devices[1].samples_per_s == 15.5
    assert (devices[1].down_bytes_per_s, devices[1].up_bytes_per_s) == (250000.0, 62500.0)
    assert [devices[1].availability.online(t) for t in (0, 3599, 3600, 7200, 10800)] == \
        [True, True, False, True, False]
    assert devices[2].availability is ALWAYS and devices[2].samples_per_s == 1000.0
    no_column = _trace(tmp_path, "client_id,samples_per_s,down_mbps,up_mbps\n0,1,1,1\n", "short.csv")
    assert read_trace(no_column, 1)[0].availability is ALWAYS
    periodic = _trace(tmp_path, "client_id,samples_per_s,down_mbps,up_mbps,availability\n0,1,1,1,0-100\n", "p.csv")
    fleet = build_system(load_config(None, ["systems.profile=\"trace\"", f"systems.trace=\"{periodic}\"",
                                            "systems.trace_period_s=1000", "systems.dropout=0.1"]).systems, 1, 0)
    assert fleet.online(0, 1050) and not fleet.online(0, 950) and fleet.device(0).dropout == 0.1


HEADER = "client_id,samples_per_s,down_mbps,up_mbps,availability\n"


@pytest.mark.parametrize("body, line, message", [
    ("client_id,samples_per_s,down_mbps\n0,1,1\n", 1, "missing column up_mbps"),
    ("client_id,samples_per_s,down_mbps,up_mbps,uptime\n0,1,1,1,x\n", 1, "unknown column 'uptime'"),
    (HEADER + "0,1,1,1,\n1,-3,1,1,\n", 3, "samples_per_s must be a positive number, got -3"),
    (HEADER + "0,1,0,1,\n1,1,1,1,\n", 2, "down_mbps must be a positive number, got 0"),
    (HEADER + "0,1,1,1,\n1,1,1,nan,\n", 3, "up_mbps must be a positive number"),
    (HEADER + "0,1,1,1,\n1,fast,1,1,\n", 3, "samples_per_s 'fast' is not a number"),
    (HEADER + "0,1,1,1,\n\n# comment\n7,1,1,1,\n", 5, "client id 7 is not a client of the data (ids 0..1)"),
    (HEADER + "0,1,1,1,\n0,1,1,1,\n", 3, "client 0 appears twice (also on line 2)"),
    (HEADER + "zero,1,1,1,\n", 2, "client_id 'zero' is not an integer"),
    (HEADER + "0,1,1,1\n", 2, "4 fields, but the header has 5"),
    (HEADER + "0,1,1,1,0-10;5-20\n", 2, "availability: interval 5-20 overlaps"),
    (HEADER + "0,1,1,1,10-5\n", 2, "availability: interval 10-5 must have 0 <= start < end"),
    (HEADER + "0,1,1,1,soon\n", 2, "availability: 'soon' is not START-END"),
])
def test_a_bad_trace_names_its_file_and_line(tmp_path, body, line, message):
    path = _trace(tmp_path, body)
    with pytest.raises(DataError) as err:
        read_trace(path, 2)
    text = str(err.value)
    assert text.startswith(f"{path}, line {line}: ") and message in text, text
    assert "\n" not in text


def test_a_trace_must_cover_every_client_and_be_readable(tmp_path):
    path = _trace(tmp_path, HEADER + "0,1,1,1,\n2,1,1,1,\n")
    with pytest.raises(DataError, match=r"fleet\.csv: no line for clients 1, 3 \(2 of the data's 4 clients\)"):
        read_trace(path, 4)
    with pytest.raises(DataError, match="missing.csv: cannot read the device trace"):
        read_trace(tmp_path / "missing.csv", 4)
    binary = tmp_path / "fleet.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(DataError, match="fleet.bin: the device trace is not a text"):
        read_trace(binary, 4)
    with pytest.raises(DataError, match="empty device trace"):
        read_trace(_trace(tmp_path, "# nothing\n", "empty.csv"), 4)
    with pytest.raises(DataError, match="line 2: availability: interval 0-200 runs past the period"):
        read_trace(_trace(tmp_path, HEADER + "0,1,1,1,0-200\n", "period.csv"), 1, period=100)


def test_a_bad_trace_stops_the_run_before_training(tmp_path):
    from fedstack.experiment import run_config

    path = _trace(tmp_path, HEADER + "0,1,1,1,\n")  # the data has 4 clients
    config = load_config(None, ["data.name=\"digits\"", "data.num_clients=4", "model.name=\"logreg\"",
                                "server.clients_per_round=2", "systems.profile=\"trace\"",
                                f"systems.trace=\"{path}\"", "engine.name=\"local\""])
    with pytest.raises(DataError, match="no line for clients 1, 2, 3"):
        run_config(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, key", [
    (["systems.dropout=1.0"], "systems.dropout"),
    (["systems.dropout=-0.1"], "systems.dropout"),
    (["systems.profile=\"trace\""], "systems.trace"),
    (["systems.trace=\"fleet.csv\""], "systems.trace"),
    (["systems.diurnal=true"], "systems.diurnal"),
    (["systems.profile=\"heterogeneous\"", "systems.tier_mix=[0.5, 0.5]"], "systems.tier_mix"),
    (["systems.profile=\"heterogeneous\"", "systems.tier_mix=[0.5, 0.6, -0.1]"], "systems.tier_mix"),
    (["systems.speed_median=0"], "systems.speed_median"),
    (["systems.profile=\"phones\""], "systems.profile"),
    (["server.deadline_s=-1"], "server.deadline_s"),
    (["server.overselect=-0.5"], "server.overselect"),
    (["data.num_clients=12", "server.clients_per_round=10", "server.overselect=0.3"], "server.overselect"),
    (["client.partial_work=true"], "client.partial_work"),
    (["server.sampler=\"bogus\""], "server.sampler"),
    (["decentralized.topology=\"ring\"", "systems.profile=\"heterogeneous\""], "systems.profile"),
])
def test_bad_systems_settings_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.key == key


def test_good_systems_settings_validate():
    config = load_config(None, ["data.num_clients=13", "server.clients_per_round=10", "server.overselect=0.3",
                                "server.deadline_s=30", "client.partial_work=true", "server.sampler=\"available\"",
                                "systems.profile=\"heterogeneous\"", "systems.diurnal=true", "systems.dropout=0.2",
                                "systems.speed_sigma=0.5", "systems.tier_mix=[0.2, 0.3, 0.5]"])
    fleet = build_system(config.systems, 13, config.seed)
    assert isinstance(fleet, Fleet) and fleet.num_clients == 13 and fleet.device(0).dropout == 0.2
