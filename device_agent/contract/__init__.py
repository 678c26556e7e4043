"""The contract room: what the agent and the fleet agree on, and nothing that runs.

- ``manifest``: the model card (``edgekit.json``), its schema and its one reader;
- ``protocol``: MQTT message schemas and their codec (``topics``: topic names and ids; ``enums``);
- ``errors``: the agent's exception tree;
- ``types``: tensor and JSON type names.

Lowest layer: imports the standard library and numpy only, and no other room of device_agent.
"""
