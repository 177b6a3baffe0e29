"""Plant physics per reference site: what each meter would read at a given moment.

A plant integrates power into counters between calls, so energy, volume and hour
counters always agree with the powers and flows they come from. Device values are
keyed by the channel names of the shipped profiles; a device whose role the plant
does not know gets a generic model of its kind.
"""

from __future__ import annotations

import datetime as dt
import math
import zlib

from contract.config.site import Device, Site
from simulators.sky import pv_fraction


def _seed(text: str) -> int:
    return zlib.crc32(text.encode()) % 1000


def _wave(t: dt.datetime, period_s: float, seed: int) -> float:
    """A smooth value in [-1, 1]."""
    return math.sin(2 * math.pi * t.timestamp() / period_s + seed)


def _day_factor(t: dt.datetime, seed: int, amplitude: float = 0.08) -> float:
    """A slow multi-day swing (feedstock, demand, weather), so that days differ."""
    return 1 + amplitude * math.sin(2 * math.pi * t.timestamp() / (9.3 * 86400) + seed)


def _local_hour(t: dt.datetime, site: Site) -> float:
    lt = t.astimezone(site.zone)
    return lt.hour + lt.minute / 60


class Plant:
    """Instantaneous model + counters; ``values(device, t)`` gives a device's channels."""

    def __init__(self, site: Site, start: dt.datetime):
        self.site = site
        self.last = start
        self.counters: dict[tuple[str, str], float] = {}
        self.state: dict[str, float] = {}
        self.step(start)

    # -- subclasses fill self.state (powers in kW, flows per hour) ---------------
    def model(self, t: dt.datetime) -> dict[str, float]:
        raise NotImplementedError

    def rates(self, device: Device) -> dict[str, float]:
        """Counter channel -> rate per hour in the counter's unit, for ``device``."""
        return {}

    def instant(self, device: Device) -> dict[str, float]:
        return {}

    def step(self, t: dt.datetime) -> None:
        hours = max(0.0, (t - self.last).total_seconds() / 3600)
        self.state = self.model(t)
        self.last = max(self.last, t)
        for device in self.site.devices:
            for channel, rate in self.step_rates(device).items():
                key = (device.id, channel)
                if key not in self.counters:
                    # a meter that has been running for a while: a deterministic start value
                    self.counters[key] = (1000 + _seed(device.id + channel)) * max(rate, 1.0)
                self.counters[key] += rate * hours

    def reset_counters(self, device_id: str) -> None:
        for key in self.counters:
            if key[0] == device_id:
                self.counters[key] = 0.0

    def values(self, device: Device, t: dt.datetime) -> dict[str, float]:
        if t > self.last:
            self.step(t)
        out = self.instant(device)
        _complete(device, out)
        for channel in self.step_rates(device):
            out[channel] = self.counters[(device.id, channel)]
        return out

    def step_rates(self, device: Device) -> dict[str, float]:
        return {**_secondary_rates(device, self.instant(device)), **self.rates(device)}


def _channels(device: Device) -> set[str]:
    return {p.channel for p in device.register_map.points}


def _complete(device: Device, out: dict) -> None:
    """Fill the secondary channels of a device from its main ones (voltages, phases, temperatures)."""
    if device.kind == "power_meter":
        kw = out.get("active_power", 0.0)
        vrange = device.register_map.point("voltage_l1").range if "voltage_l1" in _channels(device) else None
        # a site that narrows the voltage range to a medium-voltage band has a meter reading primary values
        v = vrange[1] / 1.2 if vrange and 1000 < vrange[1] < 50000 else 230.0
        amps = abs(kw) * 1000 / (3 * v * 0.95)
        out.setdefault("reactive_power", kw * 0.33)
        out.update({k: out.get(k, d) for k, d in {
            "voltage_l1": v + 1.2, "voltage_l2": v - 0.8, "voltage_l3": v + 0.3,
            "voltage_l1_l2": v * 1.7402, "voltage_l2_l3": v * 1.7353, "voltage_l3_l1": v * 1.7418,
            "current_l1": amps, "current_l2": amps * 0.98, "current_l3": amps * 1.01, "current_n": amps * 0.03,
            "active_power_l1": kw / 3, "active_power_l2": kw / 3, "active_power_l3": kw / 3,
            "apparent_power": abs(kw) / 0.95, "power_factor": 0.95 if kw else 1.0, "frequency": 50.0}.items()})
    elif device.kind == "genset":
        running = bool(out.get("engine_running"))
        kw = out.get("active_power", 0.0)
        amps = kw * 1000 / (1.732 * 400 * 0.9) if running else 0.0
        out.update({"gen_voltage_l1": 400.0 * running, "gen_voltage_l2": 399.0 * running, "gen_voltage_l3": 401.0 * running,
                    "gen_current_l1": amps, "gen_current_l2": amps, "gen_current_l3": amps,
                    "engine_speed": 1500.0 * running, "coolant_temperature": 85.0 if running else 35.0,
                    "oil_pressure": 4.5 * running, "breaker_closed": running, "common_alarm": False,
                    "reactive_power": kw * 0.3, "power_factor": 0.95 if running else 1.0, "frequency": 50.0 * running})
    elif device.kind == "steam_meter":
        out.update({"steam_heat_rate": out.get("steam_flow", 0.0) * 2.78, "feedwater_temperature": 105.0,
                    "fuel_oil_temperature": 90.0})
    elif device.kind in ("flow_meter", "gas_analyser"):
        out.setdefault("biogas_to_gensets_rate", 0.0)
        out.setdefault("biogas_to_boilers_rate", 0.0)
        out.update({"co2_fraction": 100 - out.get("ch4_fraction", 60.0) - 1.0, "h2s_concentration": 150.0,
                    "flare_valve_open": out.get("flare_flame", False)})
    elif device.kind == "transformer_monitor":
        kva = out.get("load_kva", 0.0)
        out.update({"lv_current_l1": kva * 1000 / (3 * 230), "lv_current_l2": kva * 1000 / (3 * 231),
                    "lv_current_l3": kva * 1000 / (3 * 229), "active_power": kva * 0.92,
                    "frequency": 50.0 if out.get("voltage_present") else 0.0})
    elif device.kind == "microgrid_controller":
        out.setdefault("pv_setpoint", 1600.0)
    elif device.kind == "fuel_meter":
        out.setdefault("fuel_temperature", 30.0)


def _secondary_rates(device: Device, inst: dict) -> dict[str, float]:
    """Counters that follow from instant values every plant shares."""
    if device.kind == "power_meter":
        q = inst.get("reactive_power", inst.get("active_power", 0.0) * 0.33)
        return {"reactive_energy_import": max(0.0, q), "reactive_energy_export": max(0.0, -q)}
    if device.kind == "genset":
        return {"start_count": 0.0}
    if device.kind == "microgrid_controller":
        return {"load_energy": inst.get("load_power", 0.0)}
    return {}


def _meter(export_kw: float, import_kw: float) -> tuple[dict[str, float], dict[str, float]]:
    """Instant and counter rates of a bidirectional revenue meter (kW, kWh/h); import is positive."""
    return ({"active_power": import_kw - export_kw},
            {"energy_export": max(0.0, export_kw), "energy_import": max(0.0, import_kw)})


class SolarFarm(Plant):
    """MN_AM003: inverters + a point-of-connection meter."""

    def model(self, t):
        s = self.site
        inverters = [d for d in s.devices if d.kind == "inverter"]
        rated = float(8300 / max(1, len(inverters)))
        st = {}
        for d in inverters:
            st[d.id] = rated * pv_fraction(t, s.latitude, s.longitude, seed=_seed(d.id) % 3)
        st["pv_total"] = sum(st.values())
        return st

    def instant(self, device):
        if device.kind == "inverter":
            kw = self.state.get(device.id, 0.0)
            on = kw > 0.5
            return {"ac_power": kw * 1000, "apparent_power": kw * 1010, "reactive_power": kw * 50,
                    "power_factor": 99.0 if on else 100.0, "ac_current": kw * 1000 / (1.732 * 400),
                    "ac_voltage_an": 231.0, "ac_voltage_bn": 230.5, "ac_voltage_cn": 229.8,
                    "frequency": 50.0, "dc_power": kw * 1030 if on else 0.0,
                    "dc_voltage": 780.0 if on else 0.0, "dc_current": kw * 1030 / 780.0 if on else 0.0,
                    "cabinet_temp": 20.0 + kw / 200, "operating_state": 4 if on else 2, "event_flags": 0,
                    "ac_current_a": kw * 1000 / (3 * 231.0), "ac_current_b": kw * 1000 / (3 * 230.5),
                    "ac_current_c": kw * 1000 / (3 * 229.8), "ac_voltage_ab": 400.1, "ac_voltage_bc": 399.2,
                    "ac_voltage_ca": 398.7, "heatsink_temp": 25.0 + kw / 100, "vendor_state": 0,
                    "firmware_version": "1.4.2",
                    "sunspec_marker": "SunS", "manufacturer": "JCM-Sim", "model": "SIM-3PH-2000",
                    "serial_number": f"SN-{device.id}"}
        if device.kind == "power_meter":
            exp = self.state["pv_total"] * 0.985
            return _meter(exp, 0.0 if exp > 1 else 4.0)[0]
        return {}

    def rates(self, device):
        if device.kind == "inverter":
            return {"ac_energy": self.state.get(device.id, 0.0) * 1000}  # Wh/h
        if device.kind == "power_meter":
            exp = self.state["pv_total"] * 0.985
            return _meter(exp, 0.0 if exp > 1 else 4.0)[1]
        return {}


class MicroGrid(Plant):
    """MV_AM002: PV + battery + diesel on an island feeder (Addu: 1.6 MW PV, 0.5 MWh battery)."""

    def model(self, t):
        s = self.site
        h = _local_hour(t, s)
        load = (2600 + 900 * math.exp(-((h - 20) ** 2) / 6) + 500 * math.exp(-((h - 13) ** 2) / 8)
                + 60 * _wave(t, 900, 1)) * _day_factor(t, 1)
        pv = 1600 * pv_fraction(t, s.latitude, s.longitude, seed=1)
        soc = self.state.get("soc", 60.0)
        # battery smooths PV: charge at midday surplus ramp, discharge in the evening peak
        if 10 <= h < 15 and soc < 95:
            batt = -min(250.0, 0.15 * pv)
        elif 18 <= h < 22 and soc > 20:
            batt = 220.0
        else:
            batt = 0.0
        hours = max(0.0, (t - self.last).total_seconds() / 3600)
        soc = min(100.0, max(0.0, soc - batt * hours / 500 * 100 * (0.95 if batt < 0 else 1 / 0.95)))
        diesel = max(350.0, load - pv - batt)
        return {"load": load, "pv": pv, "batt": batt, "soc": soc, "diesel": diesel}

    def instant(self, device):
        st = self.state
        if device.kind == "microgrid_controller":
            return {"pv_power": st["pv"], "diesel_power": st["diesel"], "battery_power": st["batt"],
                    "battery_soc": st["soc"], "load_power": st["load"], "frequency": 50.0}
        if device.kind == "power_meter" and "bess" in device.id:
            return _meter(max(0.0, st["batt"]), max(0.0, -st["batt"]))[0]
        if device.kind == "power_meter":
            return _meter(st["pv"], 0.0)[0]
        if device.kind == "fuel_meter" or device.kind == "flow_meter":
            return {"fuel_flow": st["diesel"] * 0.27}
        return {}

    def rates(self, device):
        st = self.state
        if device.kind == "microgrid_controller":
            return {"pv_energy": st["pv"], "diesel_energy": st["diesel"], "diesel_fuel": st["diesel"] * 0.27,
                    "battery_charge_energy": max(0.0, -st["batt"]), "battery_discharge_energy": max(0.0, st["batt"])}
        if device.kind == "power_meter" and "bess" in device.id:
            return _meter(max(0.0, st["batt"]) * 0.95, max(0.0, -st["batt"]))[1]
        if device.kind == "power_meter":
            return _meter(st["pv"], 0.0)[1]
        if device.kind in ("fuel_meter", "flow_meter"):
            return {"fuel_volume": st["diesel"] * 0.27}  # L/h at 0.27 L/kWh
        return {}


class Transformers(Plant):
    """VN_AM005: distribution transformers loaded by the hour of day, rarely de-energised."""

    def model(self, t):
        h = _local_hour(t, self.site)
        st = {}
        for d in self.site.devices:
            sd = _seed(d.id)
            load = 160 * (0.35 + 0.45 * math.exp(-((h - 19) ** 2) / 10) + 0.2 * math.exp(-((h - 11) ** 2) / 6)) \
                * _day_factor(t, sd)
            energised = 0.0 if (t.timestamp() // 60 + sd) % 997 < 3 else 1.0  # ~3 min outage every ~16 h
            st[d.id] = load * energised * (1 + 0.05 * _wave(t, 600, sd))
            st["on_" + d.id] = energised
        return st

    def instant(self, device):
        on = self.state.get("on_" + device.id, 1.0)
        kva = self.state.get(device.id, 0.0)
        return {"load_kva": kva, "oil_temperature": 35 + kva / 8, "voltage_present": bool(on),
                "lv_voltage_l1": 231.0 * on, "lv_voltage_l2": 229.5 * on, "lv_voltage_l3": 230.4 * on}

    def rates(self, device):
        return {"energy": self.state.get(device.id, 0.0) * 0.9, "energised_hours": self.state.get("on_" + device.id, 1.0)}


class BiogasPlant(Plant):
    """PH_PROV_BIOGAS: gensets on a duty cycle, biogas boilers, a flare for the surplus."""

    def model(self, t):
        h = _local_hour(t, self.site)
        gensets = [d for d in self.site.devices if d.kind == "genset"]
        st: dict[str, float] = {}
        biogas_made = (1100 + 150 * _wave(t, 5400, 2)) * _day_factor(t, 2)  # Nm3/h
        to_gensets = 0.0
        for i, d in enumerate(gensets):
            running = not (i == 1 and 2 <= h < 6)  # the second genset rests at night
            kw = (1300 + 80 * _wave(t, 1200, i)) * _day_factor(t, i, 0.05) if running else 0.0
            st[d.id] = kw
            st["gas_" + d.id] = kw * 0.55  # Nm3/h at ~0.55 Nm3/kWh
            to_gensets += st["gas_" + d.id]
        st["gen_total"] = sum(st[d.id] for d in gensets)
        st["aux"] = 140 + 20 * _wave(t, 700, 3)
        st["to_boilers"] = max(0.0, min(300.0, biogas_made - to_gensets))
        st["to_flare"] = max(0.0, biogas_made - to_gensets - st["to_boilers"])
        st["steam_tph"] = st["to_boilers"] * 6.0 / 1000 * 1.4  # t/h
        st["fuel_oil_kgph"] = 35.0 if 5 <= h < 6 else 0.0  # start-up firing
        st["ch4"] = 58 + 2 * _wave(t, 3600, 4)
        return st

    def instant(self, device):
        st = self.state
        if device.kind == "genset":
            kw = st.get(device.id, 0.0)
            return {"active_power": kw, "biogas_flow_rate": st.get("gas_" + device.id, 0.0),
                    "ch4_fraction": st["ch4"], "engine_running": kw > 0}
        if device.kind == "steam_meter":
            return {"steam_flow": st["steam_tph"], "steam_pressure": 10.5, "steam_temperature": 184.0,
                    "fuel_oil_flow": st["fuel_oil_kgph"]}
        if device.kind in ("flow_meter", "gas_analyser"):
            gensets = sum(v for k, v in st.items() if k.startswith("gas_"))
            return {"biogas_to_flare_rate": st["to_flare"], "biogas_to_boilers_rate": st["to_boilers"],
                    "biogas_to_gensets_rate": gensets, "ch4_fraction": st["ch4"], "gas_temperature": 35.0,
                    "gas_pressure": 4.2, "flare_flame": st["to_flare"] > 1}
        if device.kind == "power_meter" and "aux" in device.id:
            return _meter(0.0, st["aux"])[0]
        if device.kind == "power_meter":
            return _meter(st["gen_total"], 0.0)[0]
        return {}

    def rates(self, device):
        st = self.state
        if device.kind == "genset":
            kw = st.get(device.id, 0.0)
            return {"energy": kw, "run_hours": 1.0 if kw > 0 else 0.0, "biogas_volume": st.get("gas_" + device.id, 0.0)}
        if device.kind == "steam_meter":
            return {"steam_mass": st["steam_tph"], "steam_heat": st["steam_tph"] * 2.78,
                    "fuel_oil_mass": st["fuel_oil_kgph"] / 1000}
        if device.kind in ("flow_meter", "gas_analyser"):
            gensets = sum(v for k, v in st.items() if k.startswith("gas_"))
            return {"biogas_to_flare": st["to_flare"], "biogas_to_boilers": st["to_boilers"], "biogas_to_gensets": gensets}
        if device.kind == "power_meter" and "aux" in device.id:
            return _meter(0.0, st["aux"])[1]
        if device.kind == "power_meter":
            return _meter(st["gen_total"], 0.0)[1]
        return {}


class BiomassPlant(Plant):
    """ID_PROV_BIOMASS: a 12 MW EFB boiler/turbine with rare trips; imports when down."""

    def model(self, t):
        tripped = (t.timestamp() // 60) % 1440 < 20  # a 20-minute trip each day
        gross = 0.0 if tripped else (11200 + 400 * _wave(t, 2400, 5)) * _day_factor(t, 5, 0.05)
        aux = 250.0 if tripped else 0.095 * gross
        return {"gross": gross, "aux": aux, "net": gross - aux, "diesel_lph": 180.0 if tripped else 0.0}

    def _role(self, device):
        if device.kind != "power_meter":
            return device.kind
        return "gen" if "gen" in device.id else "aux" if "aux" in device.id else "ic"

    def instant(self, device):
        st, role = self.state, self._role(device)
        if role == "gen":
            return _meter(st["gross"], 0.0)[0]
        if role == "aux":
            return _meter(0.0, st["aux"])[0]
        if role == "ic":
            return _meter(max(0.0, st["net"]), max(0.0, -st["net"]))[0]
        if device.kind in ("fuel_meter", "flow_meter"):
            return {"fuel_flow": st["diesel_lph"]}
        return {}

    def rates(self, device):
        st, role = self.state, self._role(device)
        if role == "gen":
            return _meter(st["gross"], 0.0)[1]
        if role == "aux":
            return _meter(0.0, st["aux"])[1]
        if role == "ic":
            return _meter(max(0.0, st["net"]), max(0.0, -st["net"]))[1]
        if device.kind in ("fuel_meter", "flow_meter"):
            return {"fuel_volume": st["diesel_lph"]}
        return {}


PLANTS = {
    "MN_AM003": SolarFarm,
    "MV_AM002": MicroGrid,
    "VN_AM005": Transformers,
    "PH_PROV_BIOGAS": BiogasPlant,
    "ID_PROV_BIOMASS": BiomassPlant,
}


def plant_for(site: Site, start: dt.datetime) -> Plant:
    try:
        cls = PLANTS[site.methodology]
    except KeyError:
        raise ValueError(f"{site.site}: no simulator for methodology {site.methodology}; known: {', '.join(PLANTS)}") from None
    return cls(site, start)
