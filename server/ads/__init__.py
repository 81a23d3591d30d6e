"""Advertising money: budget pacing of campaigns (PaceBid / RecordSpend) and budget splits
across ad groups (AllocateBudget)."""
