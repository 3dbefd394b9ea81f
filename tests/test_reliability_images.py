"""Hostile images and URLs: a default timeout, a size cap, no redirect to internal addresses,
a pixel limit before decoding, errors of bounded length, clear errors for empty and bad batches.

Every connection goes to a server the test starts on 127.0.0.1; it stops by itself."""

import io
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import make_config, make_images, make_model, make_processor, make_tokenizer
from PIL import Image


def png_bytes(size=(20, 20), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        port = self.server.server_address[1]
        if self.path == "/ok.png":
            body = png_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/redirect":  # to the loopback address: an internal target
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}/ok.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/huge-declared":  # says 300 MB, sends little
            self.send_response(200)
            self.send_header("Content-Length", str(300 * 2**20))
            self.end_headers()
            self.wfile.write(b"\0" * 1024)
        elif self.path == "/huge-streamed":  # no length, more bytes than the cap
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"\0" * 4096)
        elif self.path == "/slow":  # a byte every 0.2 s, 3 s at most
            self.send_response(200)
            self.end_headers()
            for _ in range(15):
                try:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)
        elif self.path == "/trickle-headers":  # a header line every 0.25 s, 4 s at most
            self.send_response(200)
            for index in range(16):
                try:
                    self.send_header(f"X-Slow-{index}", "x")
                    self.flush_headers()
                except OSError:
                    return
                time.sleep(0.25)
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, format, *args):  # noqa: A002
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def parts():
    tokenizer = make_tokenizer()
    config = make_config(tokenizer)
    return make_model(config), make_processor(config, tokenizer)


def test_the_address_classifier_knows_internal_addresses():
    from minivlm.image_loading import is_private_address

    for address in ("10.1.2.3", "172.16.0.1", "172.31.255.1", "192.168.1.1", "169.254.169.254", "127.0.0.1",
                    "0.0.0.0", "::1", "fc00::1", "fe80::1", "::ffff:10.0.0.1", "100.64.0.1"):
        assert is_private_address(address), address
    for address in ("8.8.8.8", "1.1.1.1", "172.32.0.1", "2001:4860:4860::8888"):
        assert not is_private_address(address), address


def test_a_redirect_to_a_loopback_address_is_refused_unless_allowed(parts, server, monkeypatch):
    _, processor = parts
    assert processor(images=f"{server}/ok.png")["pixel_values"].shape[0] == 1  # the URL given is fetched
    with pytest.raises(ValueError, match="refused a redirect .* loopback, private or link-local"):
        processor(images=f"{server}/redirect")
    from minivlm.image_loading import load_image

    assert load_image(f"{server}/redirect", allow_private_redirects=True).size == (20, 20)
    monkeypatch.setenv("MINIVLM_ALLOW_PRIVATE_REDIRECTS", "1")
    assert processor(images=f"{server}/redirect")["pixel_values"].shape[0] == 1


def test_downloads_are_capped_in_size(parts, server, monkeypatch):
    _, processor = parts
    monkeypatch.setenv("MINIVLM_MAX_IMAGE_BYTES", str(100_000))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="over the 100,000-byte limit"):
        processor(images=f"{server}/huge-declared")
    with pytest.raises(ValueError, match="more than 100,000 bytes"):
        processor(images=f"{server}/huge-streamed")
    assert time.perf_counter() - start < 5


def test_a_slow_server_times_out(server):
    from minivlm.image_loading import DEFAULT_TIMEOUT, load_image

    assert DEFAULT_TIMEOUT is not None and DEFAULT_TIMEOUT <= 60  # a default, not "wait forever"
    start = time.perf_counter()
    with pytest.raises(ValueError, match="took more than 0.5 s"):
        load_image(f"{server}/slow", timeout=0.5)
    assert time.perf_counter() - start < 2.5


def test_the_timeout_covers_the_headers_too(server):
    # One header line every 0.25 s: no single read waits 1 s, yet the whole fetch must end at 1 s,
    # not when the headers are done (4 s).
    from minivlm.image_loading import load_image

    start = time.perf_counter()
    with pytest.raises(ValueError, match="took more than 1.0 s"):
        load_image(f"{server}/trickle-headers", timeout=1.0)
    elapsed = time.perf_counter() - start
    assert 0.9 < elapsed < 1.8, elapsed


def test_a_huge_image_is_refused_from_its_header_before_decoding(parts, tmp_path):
    _, processor = parts
    path = tmp_path / "bomb.png"
    Image.new("1", (13300, 13300)).save(path, format="PNG")  # ~21 kB on disk, 177 M pixels
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=r"13300x13300 = 176,890,000 pixels, over the .*-pixel limit"):
            processor(images=str(path))
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 50 * 2**20, (elapsed, peak)


def test_an_error_never_echoes_a_huge_input(parts):
    _, processor = parts
    with pytest.raises(ValueError) as error:
        processor(images="x" * 1_000_000)
    message = str(error.value)
    assert len(message) < 1000 and "…" in message and "1000000 characters" in message


def test_empty_image_lists_are_a_clear_error(parts):
    model, processor = parts
    with pytest.raises(ValueError, match=r"images=\[\] holds no image"):
        processor(images=[])
    from minivlm import MiniVLMImageToTextPipeline

    captioner = MiniVLMImageToTextPipeline(model=model, processor=processor)
    with pytest.raises(ValueError, match="no images given"):
        captioner([])


def test_one_bad_image_in_a_batch_is_named_before_anything_is_generated(parts, tmp_path, monkeypatch):
    model, processor = parts
    from minivlm import MiniVLMImageToTextPipeline

    good = tmp_path / "good.png"
    good.write_bytes(png_bytes())
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png_bytes((64, 64))[:60])
    captioner = MiniVLMImageToTextPipeline(model=model, processor=processor)
    calls = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or original(*a, **k))
    with pytest.raises(ValueError, match=r"image 1 of 3: .*truncated\.png"):
        captioner([str(good), str(truncated), make_images(1)[0]], max_new_tokens=2)
    assert calls == []  # refused before any generation: no result computed and then lost
    results = captioner([str(good), make_images(1)[0]], max_new_tokens=2)
    assert len(results) == 2 and all(isinstance(r[0]["generated_text"], str) for r in results)


def test_configs_too_large_for_any_memory_are_refused_at_once():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="num_hidden_layers=1,000,000 is over"):
        make_config(text_config={"num_hidden_layers": 10**6})
    with pytest.raises(ValueError, match="parameters .* over the 1e\\+12 limit"):
        make_config(text_config={"hidden_size": 2**20, "intermediate_size": 2**22, "num_attention_heads": 4})
    assert time.perf_counter() - start < 1.0
    make_config(text_config={"num_hidden_layers": 4})  # ordinary sizes are fine
