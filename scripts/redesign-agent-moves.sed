# issue 18, device side: device_agent's modules moved into rooms (module-path renames only).
# Apply with: sed -i -E -f scripts/redesign-agent-moves.sed FILE...   (idempotent: a new path never contains an old one)
# Not listed: device_agent.config, .ota, .runtime and .telemetry became packages of the same name that
# re-export what outside code imports; device_agent.cli and .bundle stayed where they were.
s/\bdevice_agent\.probation\b/device_agent.ota.probation/g
s/\bdevice_agent\.validate\b/device_agent.serve.validate/g
s/\bdevice_agent\.protocol\b/device_agent.contract.protocol/g
s/\bdevice_agent\.delivery\b/device_agent.ota.delivery/g
s/\bdevice_agent\.feedback\b/device_agent.telemetry.feedback/g
s/\bdevice_agent\.manifest\b/device_agent.contract.manifest/g
s/\bdevice_agent\.openapi\b/device_agent.serve.openapi/g
s/\bdevice_agent\.updater\b/device_agent.ota.updater/g
s/\bdevice_agent\.errors\b/device_agent.contract.errors/g
s/\bdevice_agent\.faults\b/device_agent.ota.faults/g
s/\bdevice_agent\.litert\b/device_agent.runtime.litert/g
s/\bdevice_agent\.outbox\b/device_agent.link.outbox/g
s/\bdevice_agent\.server\b/device_agent.serve.server/g
s/\bdevice_agent\.verify\b/device_agent.ota.verify/g
s/\bdevice_agent\.agent\b/device_agent.serve.agent/g
s/\bdevice_agent\.model\b/device_agent.runtime.model/g
s/\bdevice_agent\.store\b/device_agent.ota.store/g
s/\bdevice_agent\.mqtt\b/device_agent.link.mqtt/g
s/\bdevice_agent\.job\b/device_agent.ota.job/g
