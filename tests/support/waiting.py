"""The one way the tests wait: ask a probe again and again until it answers or a deadline
passes. Never a bare sleep: a wait ends as soon as what it waits for holds.

A probe answers with anything but None or False (True, a pid, a message, a state): that
answer is `until`'s. At the deadline it is asked once more; if it still has no answer,
`until` returns None and the caller says what did not happen, and within how long. A None
is only a finding with a control: the same wait seeing a real change in the same test.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


def until(probe: Callable[[], Optional[T]], timeout: float,
          interval: float = 0.01) -> Optional[T]:
    """`probe()`'s first answer other than None and False, asked every `interval` seconds;
    None when it gave none within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer is not None and answer is not False:
            return answer
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)
