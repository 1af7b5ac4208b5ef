"""Whether a payload goes out as a text frame or a binary one."""

from __future__ import annotations


def is_text(payload: bytes) -> bool:
    """Whether ``payload`` goes out as a text frame (valid UTF-8) rather than binary."""
    if payload.isascii():
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
