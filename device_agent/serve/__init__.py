"""The serve room: answer predictions for the loaded model, in process and over HTTP.

- ``agent``: the :class:`Agent` — validation, the runtime, per-request telemetry and feedback;
- ``validate``: requests checked against the signature before anything runs;
- ``prediction``: the answer and its JSON body; ``predictor``: the protocol the HTTP API serves;
- the HTTP API: ``server`` (the event loop, ``serve``), ``listener`` (limits, workers, the open
  connections), ``connection`` (one connection: deadlines,
  body budget), ``wire`` (HTTP/1.1 heads), ``budget``, ``exchange`` (request/response types),
  ``routes`` (routing, tokens, the ``/v1`` handlers), ``v2`` and ``v2_codec`` (the Open Inference
  Protocol), ``auth`` (tokens, loopback, TLS), ``bodies``, ``jsonbody``, ``npz`` (request bodies),
  ``openapi`` and ``openapi_v2`` (the API's OpenAPI document).

Imports the telemetry, runtime and contract rooms; never the daemon, the MQTT link or OTA.
"""
