"""The daemon's configuration: schema, YAML loading and error messages."""
