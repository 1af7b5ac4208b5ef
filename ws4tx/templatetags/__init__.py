"""Template tags of ws4tx (``{% load ws4tx %}``)."""
