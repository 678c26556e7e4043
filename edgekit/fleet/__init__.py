"""The operator's side of the fleet: build and sign jobs, deploy in waves, watch, roll back.

- :mod:`edgekit.fleet.jobs`     job documents, chunks and signed commands from an output directory
- :mod:`edgekit.fleet.client`   the one MQTT adapter of the fleet side (paho, VERSION2 callbacks)
- :mod:`edgekit.fleet.rollout`  waves, abort thresholds, per-device timeouts, metric gate
- :mod:`edgekit.fleet.status`   the device table (state, model, job, latency, requests, outbox)
"""
