"""Spans of child processes (fire processes, Celery workers) for the telemetry
tests: each process records with the OpenTelemetry SDK and writes every span
it ends, as one JSON line, to ``spans-<pid>.jsonl`` in a directory the test
reads afterwards."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """Appends each span, as JSON, to a file (written as each span ends)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as out:
            for span in spans:
                assert span.context is not None
                out.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "kind": span.kind.name,
                            "pid": os.getpid(),
                            "trace_id": f"{span.context.trace_id:032x}",
                            "span_id": f"{span.context.span_id:016x}",
                            "parent": f"{span.parent.span_id:016x}" if span.parent else None,
                            "links": [
                                {"span_id": f"{link.context.span_id:016x}", **dict(link.attributes or {})}
                                for link in span.links
                            ],
                            "attributes": dict(span.attributes or {}),
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


def record_spans(directory: str) -> TracerProvider:
    """Make this process record spans into `directory` (the global provider)."""
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesExporter(Path(directory) / f"spans-{os.getpid()}.jsonl"))
    )
    trace.set_tracer_provider(provider)
    return provider


def read_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span the processes recording into `directory` ended."""
    return [
        json.loads(line)
        for path in sorted(directory.glob("spans-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
