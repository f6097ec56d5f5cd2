"""OpenTelemetry for atriggers (extra ``otel``): what an application may call.

atriggers records spans and metrics through the global OpenTelemetry providers
once an SDK is configured, or through those given to `configure`. The spans,
metrics and how trace context travels are described in docs/observability.md
and in `atriggers._telemetry`, which holds the hooks the manager, runners and
sweeper call.
"""

from __future__ import annotations

from ._telemetry import METRICS, configure, current_traceparent, enabled

__all__ = ["METRICS", "configure", "current_traceparent", "enabled"]
