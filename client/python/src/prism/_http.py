"""A small HTTP/1.1 client over `http.client`: one kept-alive connection per thread,
the bearer token on every request, and every non-success answer raised as its
`PrismError`. No proxies are consulted: a Prism server is called directly."""

from __future__ import annotations

import http.client
import socket
import threading
from typing import Dict, Mapping, NamedTuple, Optional, Tuple, Union
from urllib.parse import urlsplit

from ._errors import PrismConnectionError, error_from_answer

__all__ = ["Answer", "Http", "HEADER_LENGTH"]

#: The binary tensor extension's header: the length of a body's JSON part.
HEADER_LENGTH = "Inference-Header-Content-Length"


class Answer(NamedTuple):
    status: int
    headers: Dict[str, str]  # names in lower case
    body: bytes


class Http:
    """Requests to one server (`url` like `http://127.0.0.1:8000`; `127.0.0.1:8000`
    alone means http). `timeout` bounds each socket operation in seconds (None: wait as
    long as the server takes, as `ray.get` does)."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: Optional[float] = None) -> None:
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected a server URL like http://127.0.0.1:8000, got {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._headers: Dict[str, str] = {}
        if token is not None:
            if not token.isascii() or not token.isprintable() or not token.strip():
                raise ValueError("the token must be printable ASCII")
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self._timeout)

    def close(self) -> None:
        """Closes this thread's connection (the next request opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Union[bytes, bytearray, memoryview]] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Answer:
        """Sends `method path` with `body`; returns the answer if its status is 2xx and
        raises the `PrismError` of the server's `{"error": ...}` otherwise."""
        url = self.url + path
        all_headers = dict(self._headers)
        if headers:
            all_headers.update(headers)
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        conn: Optional[http.client.HTTPConnection] = getattr(self._local, "conn", None)
        self._local.conn = None
        exchanged: Optional[Tuple[http.client.HTTPResponse, bytes]] = None
        if conn is not None:
            try:
                exchanged = self._exchange(conn, method, path, body, all_headers)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server had closed meanwhile: the request
                # was not read, and is sent again once, on a fresh connection.
                conn.close()
                conn = None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise self._failed(e, url) from e
        if conn is None or exchanged is None:
            conn = self._connection()
            try:
                exchanged = self._exchange(conn, method, path, body, all_headers)
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise self._failed(e, url) from e
        response, data = exchanged
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        if response.will_close:
            conn.close()
        else:
            self._local.conn = conn
        if not 200 <= response.status < 300:
            raise error_from_answer(response.status, data, url)
        return Answer(response.status, answer_headers, data)

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        body: Optional[Union[bytes, bytearray, memoryview]],
        headers: Dict[str, str],
    ) -> Tuple[http.client.HTTPResponse, bytes]:
        """One request on `conn` and its whole answer (read, so the connection can be
        used again)."""
        conn.request(method, self._prefix + path, body=body, headers=headers)
        response = conn.getresponse()
        return response, response.read()

    def _failed(self, e: BaseException, url: str) -> PrismConnectionError:
        if isinstance(e, socket.timeout):
            return PrismConnectionError(f"no answer within {self._timeout} s", url=url)
        if isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
            return PrismConnectionError(f"the connection broke before an answer: {e}", url=url)
        return PrismConnectionError(f"cannot reach the server: {e}", url=url)
