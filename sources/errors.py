"""The mark of a download failure worth trying again later."""


class TransientError(Exception):
    """A download that failed for a reason that may pass (a timeout, a network error, HTTP 408, 429 or 5xx) once
    the downloader's own retries ran out."""
