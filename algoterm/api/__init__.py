"""The shared API layer: errors, pagination, permissions, schema, WebSocket protocol."""
