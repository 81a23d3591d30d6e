"""Durability: the write-ahead log, snapshots and recovery. Storage moves opaque records; what
a record means is the state machine's business."""
