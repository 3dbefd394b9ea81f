"""Documented rules checked at their boundaries against values computed here by hand (or by an
independent implementation of the rule): mixture weights, the multi-turn share, byte limits, a run lock
held elsewhere, which turn a long chat forgets, truncation through the image tokens."""

import json
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import datasets
import numpy as np
import pytest
from PIL import Image

from minivlm.processing.conversations import mix_datasets


def caption_rows(prefix: str, n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * n, "captions": [["x"]] * n,
                                       "id": [f"{prefix}{i}" for i in range(n)]}).cast_column("image", datasets.Image())


def interleaved(sizes: list[int], probabilities: list[float], seed: int) -> list[str]:
    """The documented draw, written independently: each row's source drawn with `probabilities` from
    numpy's seeded generator; each source read in order, starting over when used up; it stops once
    every source has been used up at least once."""
    draws = iter(np.random.default_rng(seed).choice(len(sizes), size=10_000, p=probabilities))
    position, used_up, out = [0] * len(sizes), [False] * len(sizes), []
    while not all(used_up):
        source = int(next(draws))
        out.append(f"{'ab'[source]}{position[source]}")
        position[source] += 1
        if position[source] == sizes[source]:
            used_up[source], position[source] = True, 0
    return out


@pytest.mark.parametrize("weights", [[3, 1], [0.75, 0.25], [30, 10], [1.5, 0.5]])
def test_mixture_weights_that_do_not_sum_to_one_are_proportions(weights):
    mixed = mix_datasets([caption_rows("a", 5), caption_rows("b", 3)], weights, seed=7)
    assert list(mixed["id"]) == interleaved([5, 3], [0.75, 0.25], seed=7)


@pytest.mark.parametrize("weights", [[1, 0], [float("nan"), 1], [float("inf"), 1], [-1, 2]])
def test_mixture_weights_must_be_positive_and_finite(weights):
    with pytest.raises(ValueError, match=r"--dataset_weights .* one positive, finite weight per dataset"):
        mix_datasets([caption_rows("a", 2), caption_rows("b", 2)], weights)


# -- the multi-turn share of the caption-and-questions rows ------------------------------------------------
@pytest.mark.parametrize("fraction", [0.25, 1.0, 0.0])
def test_the_multi_turn_share_is_the_documented_draw_per_row(processor, fraction):
    from minivlm.processing.collator import ConversationCollator

    questions = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "b"}]}]
    rows = [{"id": f"img{i}", "captions": ["a red circle"], "messages": questions, "images": [Image.new("RGB", (8, 8))]}
            for i in range(40)]
    collator = ConversationCollator(processor, seed=3, epoch=2, multi_turn_fraction=fraction)
    # One row per batch: a packed row (single turns sharing the image) is the one with position ids.
    multi_turn = {row["id"] for row in rows if "position_ids" not in collator.text_batch([row])}
    # The rule by hand: row `id` is one chat in epoch e when Random("seed/e/id/view").random() < fraction.
    expected = {f"img{i}" for i in range(40) if random.Random(f"3/2/img{i}/view").random() < fraction}
    assert multi_turn == expected
    assert len(expected) == {0.0: 0, 1.0: 40}.get(fraction, len(expected))
    if fraction == 0.25:
        assert 0 < len(expected) < 40


# -- byte limits at exactly their value -------------------------------------------------------------------
BODY = b"\x89PNG" + bytes(996)  # 1000 bytes


class _Bytes(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        if self.path == "/declared":
            self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args):  # noqa: A002
        pass


@pytest.fixture
def byte_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Bytes)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("path", ["/declared", "/streamed"])
def test_a_download_of_exactly_the_byte_limit_is_allowed_and_one_byte_more_refused(byte_server, path):
    from minivlm.image_loading import ImageLoadError, fetch_url

    assert fetch_url(byte_server + path, max_bytes=1000) == BODY
    with pytest.raises(ImageLoadError, match="999"):
        fetch_url(byte_server + path, max_bytes=999)


# -- a run lock held on another host ----------------------------------------------------------------------
@pytest.mark.parametrize("pid", [1, 2**22 + 12345])  # alive here, and a pid that is running nowhere here
def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path, pid):
    from minivlm.training.guards import LOCK_NAME, RunLock, RunLockedError

    holder = {"pid": pid, "host": f"not-{socket.gethostname()}", "started": "2026-01-01T00:00:00+0000"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(RunLockedError, match=rf"process {pid} on not-{socket.gethostname()}, started 2026-01-01"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == holder  # left as it was


# -- which turn a long chat forgets, and truncation through the image tokens -------------------------------
def test_a_chat_keeps_its_newest_turns_and_forgets_the_oldest(model, processor):
    from app.engine import ChatModel, Conversation

    engine = ChatModel(model, processor, chat=True, max_turns=3)
    conversation = Conversation(image=Image.new("RGB", (32, 32)),
                                turns=[("q one", "a one"), ("q two", "a two"), ("q three", "a three")])
    messages = engine._messages(conversation, "q four")
    asked = [part["text"] for m in messages for part in m["content"] if part["type"] == "text"]
    assert asked == ["q two", "a two", "q three", "a three", "q four"]  # 3 turns kept: the oldest one goes
    assert messages[0]["content"][0] == {"type": "image"}  # the image moves to the first kept question
    assert sum(part["type"] == "image" for m in messages for part in m["content"]) == 1


def test_truncation_may_end_right_after_the_image_tokens_but_not_inside_them(processor):
    image, n = Image.new("RGB", (32, 32)), processor.image_seq_length
    full = processor(images=image, text="<image>a red circle")["input_ids"][0]
    # By hand: <bos>? then n image tokens, then 3 words.
    bos = len(full) - n - 3
    assert list(full).count(processor.image_token_id) == n and bos in (0, 1)
    kept = processor(images=image, text="<image>a red circle", truncation=True, max_length=bos + n)["input_ids"][0]
    assert list(kept) == list(full[: bos + n])
    with pytest.raises(ValueError, match=rf"max_length={bos + n - 1} cut into the image tokens of text 0"):
        processor(images=image, text="<image>a red circle", truncation=True, max_length=bos + n - 1)
