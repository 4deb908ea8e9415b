"""trawl's exceptions, in one tree::

    TrawlError
    ├── ScrapeError              the page could not be had; the job ends ``failed`` with the message
    │   ├── FetchTimeout         (also a TimeoutError) the page did not answer within the job's timeout
    │   ├── HostUnreachable      (also a ConnectionError) refused or reset connections, unknown hosts   [retried]
    │   ├── CertificateInvalid   the site's TLS certificate failed verification (expired, self-signed, another host)
    │   ├── InvalidResponse      the answer is not valid HTTP (status line, headers, chunks, an undecodable body)
    │   ├── HTTPStatusError      the site answered 4xx or 5xx                                 [429 and 5xx retried]
    │   ├── BodyTooLarge         the body is larger than the configured cap
    │   ├── NotAPage             the body is not text (a binary type, or bytes that decode in no charset)
    │   ├── RobotsDisallowed     the site's robots.txt forbids the URL to our user agent
    │   └── BrowserError         the browser failed while rendering
    │       └── BrowserCrashed   the tab or the whole browser crashed or disconnected                [retried]
    └── BrowserUnavailable       no Chromium could be found or launched (a setup problem, not a page problem)

``retryable`` says whether another attempt may succeed; ``retry_after`` is the wait the site asked for, if any.
"""

from __future__ import annotations


class TrawlError(Exception):
    pass


class ScrapeError(TrawlError):
    retryable = False
    retry_after: float | None = None


class FetchTimeout(ScrapeError, TimeoutError):
    pass


class HostUnreachable(ScrapeError, ConnectionError):
    retryable = True


class CertificateInvalid(ScrapeError):
    pass


def certificate_problem(exc: BaseException) -> str:
    """What was wrong with a certificate, in the verifier's words ("certificate has expired"), from aiohttp's
    certificate error or the ``ssl.SSLCertVerificationError`` inside it."""
    error = getattr(exc, "certificate_error", exc)
    return str(getattr(error, "verify_message", None) or error)


class InvalidResponse(ScrapeError):
    """Not retried: a server that answers in broken HTTP does so again."""


def parser_message(message: str) -> str:
    """aiohttp's parser error on one line: it spreads the offending bytes over several lines with a caret under
    the fault, which reads badly in a job's error. Long enough to show what came, not a whole header."""
    parts = [line.strip() for line in message.splitlines() if line.strip() and line.strip() != "^"]
    text = " ".join(parts)
    return text if len(text) <= 160 else text[:157] + "..."


class HTTPStatusError(ScrapeError):
    def __init__(self, status: int, url: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.url = url
        self.retryable = status == 429 or status >= 500
        self.retry_after = retry_after


class BodyTooLarge(ScrapeError):
    pass


class NotAPage(ScrapeError):
    pass


class RobotsDisallowed(ScrapeError):
    pass


class BrowserError(ScrapeError):
    pass


class BrowserCrashed(BrowserError):
    retryable = True


class BrowserUnavailable(TrawlError):
    pass
