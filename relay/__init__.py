"""Kourier relay: Kourier delivery webhooks in, routed notifications out."""

__version__ = "0.1.0"
