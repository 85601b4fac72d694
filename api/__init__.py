"""The FastAPI service: routes that translate HTTP to ``service`` calls (issue 5)."""
