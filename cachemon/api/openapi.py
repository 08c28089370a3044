"""The API's OpenAPI document (`GET /openapi.json`)."""

from __future__ import annotations

from cachemon.clock import Period

_PERIOD = {
    "name": "period",
    "in": "query",
    "schema": {"type": "string", "enum": [p.value for p in Period], "default": "1h"},
}
_FORMAT = {
    "name": "format",
    "in": "query",
    "schema": {"type": "string", "enum": ["json", "prometheus"], "default": "json"},
}
_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}
OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "cachemon metrics API", "version": "1"},
    "paths": {
        "/metrics": {
            "get": {
                "summary": "Cache metrics of a period (the seed's JSON shape, or Prometheus text 0.0.4)",
                "parameters": [_PERIOD, _FORMAT],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": [
                                        "timestamp",
                                        "period",
                                        "hitRates",
                                        "latency",
                                        "volume",
                                    ],
                                }
                            },
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _ERROR,
                    "401": _ERROR,
                    "429": _ERROR,
                    "503": _ERROR,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Process up, store readable, data age, job runner state",
                "responses": {
                    "200": {
                        "description": "ok, stale or degraded (see problems)",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "503": {
                        "description": "store unreadable",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                },
            }
        },
    },
}
