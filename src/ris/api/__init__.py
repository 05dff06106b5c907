"""The HTTP layer: FastAPI routes over the Engine."""
