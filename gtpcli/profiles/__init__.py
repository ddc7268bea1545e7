"""Built-in profiles, installed as the package data `gtpcli._profiles` (see pyproject.toml)."""
