"""The base of the errors that refuse a signed credential (a token, a grant, a resume
token): why, and whether it only expired."""

from __future__ import annotations


class Refusal(ValueError):
    """A credential that cannot be used: ``reason`` says why (never anything secret);
    ``expired`` tells an expired one from a tampered, forged or malformed one."""

    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired
