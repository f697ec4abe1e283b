"""Claim-check fetching and page rendering: the untrusted-input boundary."""
