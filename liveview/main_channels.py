"""The channels an operator watches for each kind of device (live values and charts)."""

MAIN_CHANNELS: dict[str, list[str]] = {
    "power_meter": ["active_power", "energy_export", "energy_import"],
    "inverter": ["ac_power", "ac_energy", "operating_state"],
    "genset": ["active_power", "energy", "biogas_flow_rate", "engine_running"],
    "steam_meter": ["steam_flow", "steam_heat", "fuel_oil_flow"],
    "fuel_meter": ["fuel_flow", "fuel_volume"],
    "flow_meter": ["biogas_to_flare_rate", "ch4_fraction", "flare_flame"],
    "gas_analyser": ["ch4_fraction"],
    "transformer_monitor": ["load_kva", "voltage_present", "oil_temperature"],
    "microgrid_controller": ["pv_power", "diesel_power", "battery_power", "battery_soc"],
}

#: the channel charted for "power" on a site page, by device kind
POWER_CHANNEL = {
    "power_meter": "active_power", "inverter": "ac_power", "genset": "active_power",
    "transformer_monitor": "load_kva", "microgrid_controller": "pv_power", "steam_meter": "steam_flow",
    "fuel_meter": "fuel_flow", "flow_meter": "biogas_to_flare_rate",
}
