"""Operators' live view: device states, live values, alarms, charts and monthly
figures per site, served by FastAPI with server-sent events fed from MQTT."""
