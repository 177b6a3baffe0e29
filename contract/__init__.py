"""What every stage of jcm-telemetry agrees on.

The reading message and its topics, the store's acknowledgement of what it holds
(``acknowledgement.py``), and the configuration models (sites, devices, register-map
profiles). Gateway, collector, processing and the live view import
these from here and never from each other.
"""
