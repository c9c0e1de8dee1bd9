"""Durable private storage: SQLite helpers and the audit log."""
