"""Helpers of the ws4tx benchmark suite (stdlib only: they run outside the venvs)."""
