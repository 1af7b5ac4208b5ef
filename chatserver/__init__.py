"""The ws4tx demo chat: broadcast, user, group and event chats on one Django site.

Run it with ``./demo`` (or ``python -m chatserver``) and log in as john, mary or admin
(password ``secret``). The end-to-end browser tests (``test/test_browser_*.py``) run it too.
"""
