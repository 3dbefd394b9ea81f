"""Loading images safely for the MiniVLM processor and pipeline (ships to the Hub as remote code).

`load_image` accepts what `transformers.image_utils.load_image` does (a PIL image, a local path,
an http(s) URL, a `data:image/...;base64,` URI) and passes numpy arrays and torch tensors through,
with limits that a hostile or careless input cannot get past:

- URLs: a default timeout (`DEFAULT_TIMEOUT` seconds for the whole fetch: connection, redirects,
  headers and body), a size cap (`MAX_DOWNLOAD_BYTES`), http(s) only, and no redirect to a loopback, private, link-local or
  otherwise internal address unless allowed (`allow_private_redirects=True` or the environment
  variable `MINIVLM_ALLOW_PRIVATE_REDIRECTS=1`). The URL the caller gives is fetched as given.
- Pixels: at most `MAX_IMAGE_PIXELS`, checked from the header before anything is decoded.
- Errors are `ImageLoadError` (a ValueError) with the input cut to a bounded length.

Limits can be changed per call or with `MINIVLM_MAX_IMAGE_BYTES` / `MINIVLM_MAX_IMAGE_PIXELS`.
Imports the standard library and PIL only.
"""

from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Any

from PIL import Image


DEFAULT_TIMEOUT = 10.0
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_REDIRECTS = 5
ALLOW_PRIVATE_ENV = "MINIVLM_ALLOW_PRIVATE_REDIRECTS"


class ImageLoadError(ValueError):
    """An image could not be loaded, or was refused by a limit; the message says which and the fix."""


def short(value: Any, limit: int = 120) -> str:
    """`value` (a string, else its repr) cut to about `limit` characters with an ellipsis, so errors stay readable."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _env_number(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value and value.isdigit() else default


def is_private_address(address: str) -> bool:
    """Whether an IP address (v4 or v6) is loopback, private, link-local, multicast, reserved or
    unspecified, i.e. anything but a public internet address. A pure function: connects to nothing."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified or not ip.is_global)


def host_is_private(host: str | None) -> bool:
    """Whether `host` (a name or an IP literal) resolves to any non-public address (or does not resolve)."""
    if not host:
        return True
    try:
        return is_private_address(host)
    except ValueError:
        pass  # a name, not an IP literal
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return True
    return any(is_private_address(info[4][0]) for info in infos)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def __init__(self, allow_private: bool):
        super().__init__()
        self.allow_private = allow_private

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urlsplit(newurl)
        if target.scheme not in ("http", "https"):
            raise ImageLoadError(f"refused a redirect from {short(req.full_url)} to {short(newurl)}: only http(s).")
        if not self.allow_private and host_is_private(target.hostname):
            raise ImageLoadError(
                f"refused a redirect from {short(req.full_url)} to {short(newurl)}: it points to a loopback, private "
                "or link-local address. If you trust that server, pass allow_private_redirects=True or set "
                f"{ALLOW_PRIVATE_ENV}=1."
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """The whole fetch's clock: every socket the fetch opens is shut down when `seconds` have passed.

    A per-read socket timeout alone lets a server that trickles a header line (or a body byte)
    every few seconds hold the caller forever; shutting the sockets down unblocks any read, in
    the connection, the headers or the body.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return max(0.001, self.end - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            self._shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _deadline_connection(base: type, deadline: _Deadline):
    """An `http.client` connection class whose sockets the deadline can shut down, connecting within what is left."""

    class Connection(base):
        def __init__(self, *args, **kwargs):
            kwargs["timeout"] = deadline.remaining()
            super().__init__(*args, **kwargs)

        def connect(self):
            super().connect()
            deadline.watch(self.sock)

    return Connection


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_deadline_connection(http_class, self.deadline), req, **kwargs)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_deadline_connection(http_class, self.deadline), req, **kwargs)


def fetch_url(
    url: str,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_bytes: int | None = None,
    allow_private_redirects: bool | None = None,
) -> bytes:
    """The body of an http(s) URL, at most `max_bytes`, within `timeout` seconds in all.

    The deadline covers the whole fetch: connecting, every redirect, the headers and the body
    (a server that sends a line every few seconds is cut off when the time is up, not when it
    goes quiet). Name resolution runs before the clock can stop it.
    """
    max_bytes = max_bytes or _env_number("MINIVLM_MAX_IMAGE_BYTES", MAX_DOWNLOAD_BYTES)
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    if allow_private_redirects is None:
        allow_private_redirects = os.environ.get(ALLOW_PRIVATE_ENV, "") in ("1", "true", "True", "yes")
    too_slow = f"{short(url)} took more than {timeout} s; pass a larger timeout= if the server is slow."
    with _Deadline(timeout) as deadline:
        opener = urllib.request.build_opener(
            _CheckedRedirects(allow_private_redirects), _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline)
        )
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "minivlm"})
            with opener.open(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > max_bytes:
                    raise ImageLoadError(f"{short(url)} is {int(length):,} bytes, over the {max_bytes:,}-byte limit "
                                         "(raise it with max_bytes= or MINIVLM_MAX_IMAGE_BYTES).")
                chunks, size = [], 0
                while True:
                    if deadline.expired or time.monotonic() > deadline.end:
                        raise ImageLoadError(too_slow)
                    chunk = response.read1(65536)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > max_bytes:
                        raise ImageLoadError(f"{short(url)} sent more than {max_bytes:,} bytes, the limit (raise it "
                                             "with max_bytes= or MINIVLM_MAX_IMAGE_BYTES).")
                    chunks.append(chunk)
                if deadline.expired:  # the shutdown ended the body early: it is cut short, not complete
                    raise ImageLoadError(too_slow)
        except ImageLoadError:
            raise
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
            if deadline.expired:
                raise ImageLoadError(too_slow) from None
            raise ImageLoadError(f"could not download {short(url)}: {short(str(error), 200)}") from None
    return b"".join(chunks)


def pixel_limit(max_pixels: int | None = None) -> int:
    """The most pixels an image may have: `max_pixels` when given, else `MINIVLM_MAX_IMAGE_PIXELS`, else
    `MAX_IMAGE_PIXELS`. The one limit of loading images and of checking a dataset's images."""
    return max_pixels or _env_number("MINIVLM_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)


def check_pixels(image: Image.Image, max_pixels: int | None = None, source: Any = None) -> Image.Image:
    """Raises `ImageLoadError` when `image` (opened, not yet decoded) has more than `pixel_limit(max_pixels)` pixels."""
    max_pixels = pixel_limit(max_pixels)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"image {short(source) if source is not None else ''} is {width}x{height} = {width * height:,} pixels, "
            f"over the {max_pixels:,}-pixel limit; downscale it first, or raise the limit (max_pixels= or "
            "MINIVLM_MAX_IMAGE_PIXELS) if the memory is there."
        )
    return image


def _open(data: bytes | str, source: Any, max_pixels: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the pixel check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"{short(source)} is not an image PIL can read ({short(str(error), 200)}); check that "
                             "it is a complete image (PNG, JPEG, ...).") from None
    check_pixels(image, max_pixels, source)
    try:
        image.load()  # decode now, inside the limit, so truncation is reported here with the source named
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageLoadError(f"{short(source)} could not be decoded ({short(str(error), 200)}); the file is probably "
                             "truncated or corrupt.") from None
    return image


def load_image(
    image: Any,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    allow_private_redirects: bool | None = None,
) -> Any:
    """A decoded PIL image from `image`: a PIL image (size-checked), a local path (str or PathLike),
    an http(s) URL or a `data:image/...;base64,` URI. numpy arrays and torch tensors are returned as
    they are. Raises `ImageLoadError` (a ValueError) naming the input, at bounded length."""
    if isinstance(image, Image.Image):
        return check_pixels(image, max_pixels)
    if hasattr(image, "__fspath__"):
        image = os.fspath(image)
    if not isinstance(image, str):
        return image  # numpy arrays, torch tensors, ...: the image processor takes or refuses them
    if image.startswith(("http://", "https://")):
        return _open(fetch_url(image, timeout, max_bytes, allow_private_redirects), image, max_pixels)
    if image.startswith("data:image/"):
        limit = max_bytes or _env_number("MINIVLM_MAX_IMAGE_BYTES", MAX_DOWNLOAD_BYTES)
        if len(image) > limit * 4 // 3 + 100:
            raise ImageLoadError(f"the data URI is over the {limit:,}-byte limit.")
        try:
            data = base64.b64decode(image.split(",", 1)[1])
        except (IndexError, ValueError):
            raise ImageLoadError(f"{short(image)} is not a valid base64 data URI.") from None
        return _open(data, image, max_pixels)
    if os.path.isfile(image):
        return _open(image, image, max_pixels)
    raise ImageLoadError(f"{short(image)} is not an existing file, an http(s) URL or a data:image URI; check the path.")


__all__ = ["ImageLoadError", "MAX_IMAGE_PIXELS", "check_pixels", "pixel_limit", "fetch_url", "host_is_private", "is_private_address", "load_image"]
