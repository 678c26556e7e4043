"""The serve room: answer predictions for the loaded model, in process and over HTTP.

- ``agent``: the :class:`Agent` — validation, the runtime, per-request telemetry and feedback;
- ``validate``: requests checked against the signature before anything runs;
- ``prediction``: the answer and its JSON body;
- ``predictor``: the small protocol the HTTP server serves; ``server``: the local HTTP API;
  ``bodies``: request bodies (JSON, .npy, .npz); ``openapi``: the API's OpenAPI document.

Imports the telemetry, runtime and contract rooms; never the daemon, the MQTT link or OTA.
"""
