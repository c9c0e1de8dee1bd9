"""TwinLock device runtime."""

from importlib import metadata


def version() -> str:
    """The installed distribution's version (pyproject.toml is its one home); "unknown" when the
    code runs from a checkout that was never installed (the aarch64 test pass links it)."""
    try:
        return metadata.version("twinlock")
    except metadata.PackageNotFoundError:
        return "unknown"
