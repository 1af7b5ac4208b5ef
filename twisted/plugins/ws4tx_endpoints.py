"""The ``reuseport:`` server endpoint description (see ws4tx.server.reuseport)."""

from ws4tx.server.reuseport import ReusePortParser

reuseport = ReusePortParser()
