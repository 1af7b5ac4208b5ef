"""The ``reuseport:`` server endpoint description (see ws4tx.reuseport)."""

from ws4tx.reuseport import ReusePortParser

reuseport = ReusePortParser()
