"""The Temporal connection and the options every start of a conversation shares."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime

from runtime import tracing
from runtime.codec import codec_from_env, data_converter

# Conversations are started (by the API, the platform protocol, a bench) with a workflow task timeout this long;
# Temporal's default is 10 s, which held a crashed worker's conversations back for 8 s after a restart
# (bench/worker_crash.py). Every task must finish well within it: a run holds at most a few hundred history events
# (workflows.options.RUN_EVENTS), so a cold replay takes well under a second here. A run continued as new keeps its
# run's value.
WORKFLOW_TASK_TIMEOUT = timedelta(seconds=3)


async def connect(
    target: str | None = None, namespace: str | None = None, runtime: Runtime | None = None, service: str = "baton",
) -> Client:
    """TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TLS... via the SDK's envconfig; BATON_PAYLOAD_KEYS
    turns on the payload codec (runtime.codec): every client and so every worker made from it encrypts. `runtime`: the
    SDK runtime whose metrics `/metrics` shows (runtime.metrics.sdk_runtime). With OTEL_EXPORTER_OTLP_ENDPOINT the
    client (and every worker made from it) traces, as `service` (runtime.tracing)."""
    config = ClientConfig.load_client_connect_config()
    if target:
        config["target_host"] = target
    if namespace:
        config["namespace"] = namespace
    config.setdefault("target_host", "localhost:7233")
    return await Client.connect(**config, data_converter=data_converter(codec_from_env()), runtime=runtime,
                                interceptors=tracing.setup(service))
