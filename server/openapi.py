"""The OpenAPI description of the server's HTTP API, served at ``/openapi.json``.

Written by hand: the API is small, and the document is also the input of the
property-based tests, which check that no request, valid or not, gets a 5xx.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}


def _routing_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["live", "canary", "canary_share", "salt", "revision", "loaded"],
        "properties": {
            "live": {"type": "string", "nullable": True},
            "canary": {"type": "string", "nullable": True},
            "canary_share": {"type": "number", "minimum": 0, "maximum": 1},
            "salt": {"type": "string"},
            "revision": {"type": "integer", "minimum": 0},
            "loaded": {
                "type": "object",
                "description": "Item-matrix revision in this process's memory, per version.",
                "additionalProperties": {"type": "integer"},
            },
        },
    }


def _admin_responses() -> dict[str, Any]:
    routing = {"application/json": {"schema": {"$ref": "#/components/schemas/Routing"}}}
    return {
        "200": {"description": "The routing after the change.", "content": routing},
        "400": {"description": "A malformed body.", "content": _TEXT},
        "401": {"description": "A missing or wrong bearer token.", "content": _TEXT},
        "403": {"description": "Admin endpoints are off (no token configured).", "content": _TEXT},
        "409": {
            "description": "The change contradicts the routing or the versions.",
            "content": _TEXT,
        },
        "503": {"description": "Redis is not reachable; try again.", "content": _TEXT},
    }


def openapi_document(max_user_id: int = 10_000_000, list_length: int = 20) -> dict[str, Any]:
    """The API description.

    Examples
    --------
    >>> doc = openapi_document()
    >>> doc["openapi"], sorted(doc["paths"])[:3]
    ('3.0.3', ['/admin/canary', '/admin/live', '/admin/promote'])
    """
    trace_headers = {
        "X-Request-Id": {
            "description": "Identifier of this answer; its provenance record carries it.",
            "schema": {"type": "string"},
        },
        "X-Model-Version": {
            "description": "The model version the user is routed to ('none' when none is).",
            "schema": {"type": "string"},
        },
        "X-Model-Revision": {
            "description": "Item-matrix revision that scored the list (0: popularity).",
            "schema": {"type": "string"},
        },
        "X-Fallback": {
            "description": "Why the list comes from popularity; absent for the model's list.",
            "schema": {"type": "string"},
        },
    }
    admin = {"security": [{"bearer": []}], "tags": ["admin"]}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "reelfeed recommendation server",
            "version": "1",
            "description": (
                "Movie recommendations for the users of a streaming site, from a model "
                "that learns from the site's stream within seconds."
            ),
        },
        "paths": {
            "/recommend/{user_id}": {
                "get": {
                    "summary": f"Up to {list_length} movie ids for a user, best first.",
                    "operationId": "recommend",
                    "parameters": [
                        {
                            "name": "user_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0, "maximum": max_user_id},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": (
                                "One line of comma-separated movie ids without spaces "
                                "(empty when nothing is known yet)."
                            ),
                            "headers": trace_headers,
                            "content": {
                                "text/plain": {
                                    "schema": {"type": "string", "pattern": "^[^, ]*(,[^, ]+)*$"}
                                }
                            },
                        },
                        "400": {"description": "Not a valid user id.", "content": _TEXT},
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process is alive.",
                    "operationId": "healthz",
                    "responses": {"200": {"description": "Alive.", "content": _TEXT}},
                }
            },
            "/health": {
                "get": {
                    "summary": "The same as /healthz.",
                    "operationId": "health",
                    "responses": {"200": {"description": "Alive.", "content": _TEXT}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "A model or at least popularity is in memory.",
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "Ready to answer.", "content": _JSON_OBJECT},
                        "503": {
                            "description": "Nothing to answer with yet.",
                            "content": _JSON_OBJECT,
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics.",
                    "operationId": "metrics",
                    "responses": {
                        "200": {"description": "Text exposition format.", "content": _TEXT}
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3.", "content": _JSON_OBJECT}},
                }
            },
            "/admin/routing": {
                "get": {
                    **admin,
                    "summary": "The routing in Redis, and what this process has loaded.",
                    "operationId": "getRouting",
                    "responses": _admin_responses(),
                }
            },
            "/admin/live": {
                "put": {
                    **admin,
                    "summary": "Make a version live (ends its canary if it was the canary).",
                    "operationId": "setLive",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["version"],
                                    "properties": {
                                        "version": {"$ref": "#/components/schemas/Version"},
                                        "force": {"type": "boolean", "default": False},
                                    },
                                }
                            }
                        },
                    },
                    "responses": _admin_responses(),
                }
            },
            "/admin/canary": {
                "put": {
                    **admin,
                    "summary": "Route a stable share of users to a canary version.",
                    "operationId": "setCanary",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["version", "share"],
                                    "properties": {
                                        "version": {"$ref": "#/components/schemas/Version"},
                                        "share": {"type": "number", "minimum": 0, "maximum": 1},
                                        "salt": {
                                            "type": "string",
                                            "minLength": 1,
                                            "maxLength": 128,
                                            "description": "Picks the users; new by default.",
                                        },
                                        "force": {"type": "boolean", "default": False},
                                    },
                                }
                            }
                        },
                    },
                    "responses": _admin_responses(),
                },
                "delete": {
                    **admin,
                    "summary": "End the canary: every user goes to the live version.",
                    "operationId": "clearCanary",
                    "responses": _admin_responses(),
                },
            },
            "/admin/promote": {
                "post": {
                    **admin,
                    "summary": "Make the canary live and end the canary, in one step.",
                    "operationId": "promoteCanary",
                    "responses": _admin_responses(),
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Version": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
                "Routing": _routing_schema(),
            },
        },
    }
