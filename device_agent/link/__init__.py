"""The link room: everything between the device and the fleet's broker.

- ``outbox``: the disk-backed store-and-forward queue every outgoing message is written to first;
- ``mqtt``: the one paho-mqtt adapter (TLS, Last Will, reconnect, outbox pumping);
- ``reporter``: telemetry, job and state messages, built on the device's topics;
- ``commands``: commands in, routed to their handlers (the OTA updater's).

Imports the config, serve, ota, telemetry, runtime and contract rooms; only the daemon imports it.
"""
