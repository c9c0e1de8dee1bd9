"""TwinLock device runtime."""
