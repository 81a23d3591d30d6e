"""More than one process: ``serve --workers N``'s supervisor, workers and replication."""
