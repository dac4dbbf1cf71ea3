"""Helpers for testing streamq apps and streamq itself against real brokers."""
