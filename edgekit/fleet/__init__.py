"""The operator's side of the fleet: build and sign jobs, deploy in waves, watch, roll back.

- :mod:`edgekit.fleet.mqtt`     the fleet side's one MQTT adapter: broker URL, TLS, credentials, sessions
                                (also used by :mod:`edgekit.monitor`)
- :mod:`edgekit.fleet.client`   device views (state, telemetry, job updates) and commands over one session
- :mod:`edgekit.fleet.jobs`     job documents, chunks and signed commands from an output directory
- :mod:`edgekit.fleet.rollout`  waves, abort thresholds, per-device timeouts, metric gate
- :mod:`edgekit.fleet.status`   the device table (state, model, job, latency, requests, outbox)
"""
