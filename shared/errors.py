"""trawl's exceptions, in one tree::

TrawlError
├── ScrapeError              the page could not be fetched or read; the job ends ``failed`` with the message
│   ├── FetchTimeout         (also a TimeoutError) the page did not answer within the job's timeout
│   ├── HostUnreachable      (also a ConnectionError) DNS, refused or reset connections
│   ├── HTTPStatusError      the site answered with a 4xx or 5xx status
│   ├── BodyTooLarge         the body is larger than the configured cap
│   └── BrowserError         the browser or the tab failed while rendering
└── BrowserUnavailable       no Chromium could be found or launched (a setup problem, not a page problem)
"""

from __future__ import annotations


class TrawlError(Exception):
    pass


class ScrapeError(TrawlError):
    pass


class FetchTimeout(ScrapeError, TimeoutError):
    pass


class HostUnreachable(ScrapeError, ConnectionError):
    pass


class HTTPStatusError(ScrapeError):
    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.url = url


class BodyTooLarge(ScrapeError):
    pass


class BrowserError(ScrapeError):
    pass


class BrowserUnavailable(TrawlError):
    pass
