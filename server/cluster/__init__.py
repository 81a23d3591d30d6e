"""More than one process: replicas sharing a log in Redis/Valkey, and ``serve --workers N``'s
supervisor of them and of an embedded engine."""
