"""Settings: the schema of ``settings.toml``, its value types, loading and validation,
and the description of every channel the settings may name."""
