"""The OpenAI-compatible HTTP server (FastAPI): `create_app(runtime)` over a `ServingRuntime`."""
