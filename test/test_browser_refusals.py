"""ws4tx.js in headless Chromium against a real ``twistd ws4tx`` (issue #22): a user in 200
groups on a facility with history reconnects after a server restart and recovers what its
URL can carry (positions past the query cap are left out, and said not recovered, instead of
a 414 dialed forever); a URL the server refuses (403) is not dialed in a loop: the page is
told why and stops."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from test._recovering import publish_with_history
from test.test_browser_recovery import RETENTION, WAIT_MS, PageAndRedisTests

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

GROUPS = 200

#: The server's Django settings: the suite's, with a PROCESS_REQUEST that makes every
#: client a user in GROUPS groups and refuses the facility ``forbidden``.
SETTINGS = f'''
from django.core.exceptions import PermissionDenied
from test.settings import *  # noqa

WS4TX_PROCESS_REQUEST = "many_groups.process"


class _Groups:
    def values_list(self, *fields, flat=False):
        return [f"g{{i:03d}}" for i in range({GROUPS})]


class _User:
    is_authenticated = True
    groups = _Groups()

    def get_username(self):
        return "many"


def process(request):
    if request.path.endswith("/forbidden"):
        raise PermissionDenied("this facility is not allowed")
    request.user = _User()
'''


def group_channel(i: int) -> str:
    return f"ws4tx:group:g{i:03d}:chat"


class RefusalsInChromiumTests(PageAndRedisTests):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="ws4tx-groups-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        with open(f"{self.directory}/many_groups.py", "w") as f:
            f.write(SETTINGS)
        super().setUp()

    def startServer(self) -> None:
        self.startTwistd("--django-settings", "many_groups", path=self.directory)

    def open(self, path: str) -> None:
        self.page.evaluate("""(url) => {
          window.got = []; window.verdicts = []; window.refusals = []; window.attempts = 0;
          window.c = new WS4TX(url, {minDelay: 100, maxDelay: 300});
          c.on('connecting', () => attempts++);
          c.on('message', (m) => got.push(m));
          c.on('recovered', (v) => verdicts.push(v));
          c.on('refused', (r) => refusals.push(r));
        }""", f"ws://127.0.0.1:{self.port}/ws/{path}")

    def test_aUserInTwoHundredGroupsReconnectsAndRecoversWhatFits(self) -> None:
        """After a restart the page's 200 positions (about 13 KB of query) do not fit in
        the 2 KB cap: it reconnects with those that fit, gets exactly the messages missed
        on their channels, and is told the others were not recovered; then goes on live
        on every channel."""
        self.open("chat?subscribe-group")
        self.page.wait_for_function(
            f"() => Object.keys(c.positions).length === {GROUPS}", timeout=WAIT_MS)
        self.assertEqual(self.server.stop(), 0)
        for i in range(GROUPS):
            publish_with_history(self.redis, group_channel(i), f"missed {i}".encode(),
                                 RETENTION)
        self.startServer()
        self.page.wait_for_function("() => verdicts.length >= 1", timeout=WAIT_MS)
        [verdict] = self.page.evaluate("verdicts")
        self.assertEqual((verdict["recovered"], verdict["reason"]), (False, "query-too-long"))
        channels = verdict["channels"]
        self.assertEqual(set(channels), {group_channel(i) for i in range(GROUPS)})
        recovered = sorted(c for c, v in channels.items() if v["recovered"])
        self.assertGreaterEqual(len(recovered), 20)
        for channel in recovered:
            self.assertEqual(channels[channel], {"recovered": True, "messages": 1})
        for channel in set(channels) - set(recovered):
            self.assertEqual(channels[channel],
                             {"recovered": False, "reason": "query-too-long"})
        self.assertEqual(sorted(self.page.evaluate("got")),
                         sorted(f"missed {int(c.split(':')[2][1:])}" for c in recovered))
        self.assertEqual(self.page.evaluate("[c.state, refusals]"), ["connected", []])
        # Live again on a channel that was not recovered.
        missed = next(c for c in channels if c not in recovered)
        publish_with_history(self.redis, missed, b"live", RETENTION)
        self.page.wait_for_function("() => got.includes('live')", timeout=WAIT_MS)

    def test_aRefusedUrlIsNotDialedInALoop(self) -> None:
        """The facility is not allowed (403): after two sockets closed before they
        opened, the page learns why, stops, and dials no more over an hour of its
        timers."""
        self.page.clock.install()
        self.open("forbidden?subscribe-broadcast")
        self.page.wait_for_function("() => refusals.length >= 1", timeout=WAIT_MS)
        self.assertEqual(self.page.evaluate("refusals"), [
            {"status": 403, "reason": "this facility is not allowed"}])
        attempts = self.page.evaluate("attempts")
        # The probe goes after the second socket; its answer comes during a backoff or,
        # on a busy machine, a few (the dialing goes on meanwhile): then it stops.
        self.assertGreaterEqual(attempts, 2)
        self.page.clock.run_for(3_600_000)
        self.assertEqual(self.page.evaluate("[c.state, attempts]"), ["closed", attempts])
