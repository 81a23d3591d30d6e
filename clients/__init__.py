"""Python clients for banditd over the generated decision.v1 stubs."""

from banditd.clients.client import AsyncBanditClient, BanditClient, RetryPolicy

__all__ = ["AsyncBanditClient", "BanditClient", "RetryPolicy"]
