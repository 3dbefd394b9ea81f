"""The app: boxes, uploads, streamed captions and answers, the Space's files, and the page in a real browser.

The browser test starts the app on 127.0.0.1 over a tiny model saved to a temporary folder and
drives Debian's headless Chromium with Playwright: it uploads an image, waits for the caption,
asks a question and compares the page's text with what `model.generate` gives for the same
prompts. It is skipped, with the commands that install what it needs, where no Chromium is.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import importlib.util
import shutil
import socket
import struct
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, WORDS, make_config, make_images, make_model, make_processor
from PIL import Image

from minivlm.app.boxes import GRID, Box, draw_reply_boxes, reply_boxes
from minivlm.app.engine import ChatModel, Decoding, ImageError, Reply, load_image_file, template_has_generation_prompt
from minivlm.processing.shapes import make_shapes_examples
from minivlm.processing.tokenizer import build_word_level_tokenizer


# A role-based chat template of the kind instruction tuning brings: the answer is announced by
# "assistant:", so the app offers questions.
ROLE_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:"
    "{% if message['content'] is string %} {{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
QUESTION = "what colour is the shape?"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def make_chat_parts(seed: int = 1):
    """A tiny untied model (random untied weights write varied words; tied ones repeat the last
    token) and a processor with a role-based template."""
    tokenizer = build_word_level_tokenizer([WORDS + " user assistant : what colour is shape ?"])
    config = make_config(tokenizer, text_config={"tie_word_embeddings": False})
    processor = make_processor(config, tokenizer)
    processor.chat_template = ROLE_TEMPLATE
    model = make_model(config, seed=seed)
    model.generation_config.min_new_tokens = 2  # random weights may put EOS first: a reply has words to compare
    return model, processor


def plain_generate(model, processor, image, prompt: str, max_new_tokens: int) -> str:
    """The reference: one uncached `generate` over the whole prompt, pixels included."""
    inputs = processor(images=image, text=prompt)
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.post_process_image_text_to_text(ids[:, inputs["input_ids"].shape[1]:])[0]


# -- boxes ---------------------------------------------------------------------------------------
def test_reply_boxes_reads_the_documented_format():
    text = "the red circle [100, 200, 300, 400] and a blue square [900,50,600,450]; noise [1, 2, 3] [0, 0, 1200, 5]"
    boxes = reply_boxes(text)
    assert boxes == [Box(100, 200, 300, 400, "red circle"), Box(600, 50, 900, 450, "blue square")]
    assert reply_boxes("a box [10, 20, 30, 40]") == [Box(10, 20, 30, 40, "box")]
    assert reply_boxes("off the image [-10, 20, 30, 40]") == []
    assert reply_boxes("no boxes here, [5, 5, 5, 9] has no area") == []


def test_draw_boxes_outlines_the_box_on_an_enlarged_copy():
    image = Image.new("RGB", (32, 32), "white")
    drawn = draw_reply_boxes(image, [Box(250, 250, 750, 750, "")], min_side=320)
    assert drawn.size == (320, 320) and image.size == (32, 32)
    left_edge = drawn.getpixel((80, 200))  # x = 250/1000 of 320, below the label
    assert left_edge != (255, 255, 255) and drawn.getpixel((160, 160)) == (255, 255, 255)
    assert Box(0, 0, GRID, GRID).to_pixels(64, 32) == (0, 0, 64, 32)


def test_boxes_in_an_answer_reach_the_page_drawn(monkeypatch):
    gr = pytest.importorskip("gradio", reason="the page needs gradio: pip install -e '.[app]'")
    from minivlm.app import ui

    model, processor = make_chat_parts()
    answer = "the red circle [100, 200, 300, 400] and the square [500, 500, 900, 700]"
    monkeypatch.setattr(processor, "post_process_image_text_to_text", lambda ids, **kwargs: [answer])
    chat = ChatModel(model, processor, max_new_tokens=3)
    conversation = chat.new_conversation(make_images(1)[0])
    reply = list(chat.stream(conversation, "where are they?"))[-1]
    assert reply.text == answer and [b.label for b in reply.boxes] == ["red circle", "square"]
    view = ui._boxes_view(conversation, reply)
    assert isinstance(view, gr.Image) and view.visible
    assert not ui._boxes_view(conversation, Reply("no boxes", [], 0.0, 1, False)).visible


# -- uploads -------------------------------------------------------------------------------------
def test_load_image_file_names_the_problem_and_the_fix(tmp_path):
    good = tmp_path / "good.png"
    make_images(1)[0].save(good)
    assert load_image_file(good).mode == "RGB"

    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(ImageError, match="not an image PIL can read; upload a PNG, JPEG"):
        load_image_file(text)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match="damaged or cut short .*upload the complete file again"):
        load_image_file(truncated)
    with pytest.raises(ImageError, match=r"over the 0 MB limit; upload a smaller image"):
        load_image_file(good, max_bytes=100)
    with pytest.raises(ImageError, match="over the 0-megapixel limit"):
        load_image_file(good, max_pixels=100)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image_file(empty)


# -- captions and answers ------------------------------------------------------------------------
def test_streamed_caption_and_answers_equal_plain_generate_and_reuse_the_image():
    model, processor = make_chat_parts()
    chat = ChatModel(model, processor, max_new_tokens=6)
    assert chat.chat
    image = make_images(1, size=48)[0]
    conversation = chat.new_conversation(image)
    encoder_calls = []
    model.vision_tower.register_forward_hook(lambda *args: encoder_calls.append(1))

    updates = list(chat.stream(conversation))
    assert len(encoder_calls) == 1
    caption = updates[-1]
    assert isinstance(caption, Reply) and caption.image_encoded and caption.text
    assert updates[-2] == caption.text  # the streamed text ends where the final one does
    assert caption.text == plain_generate(model, processor, image, "user:<image> assistant:", 6)
    answers = []
    questions = [QUESTION, "is it red?", "what is on the left?"]
    for question in questions:
        calls_before = len(encoder_calls)
        answer = list(chat.stream(conversation, question))[-1]
        assert not answer.image_encoded and len(encoder_calls) == calls_before  # the prefix was reused
        earlier = "".join(f" {q} assistant: {a}<eos> user:" for q, a in conversation.turns[:-1])
        prompt = f"user:<image>{earlier} {' '.join(question.split())} assistant:"
        assert answer.text == plain_generate(model, processor, image, prompt, 6), question
        answers.append(answer.text)
    assert len({caption.text, *answers}) > 1  # the prompts differ, and so do (some of) the texts
    assert [q for q, _ in conversation.turns] == [" ".join(q.split()) for q in questions]


def test_short_chat_keeps_the_last_turns_and_the_image_first():
    model, processor = make_chat_parts()
    chat = ChatModel(model, processor, max_new_tokens=3, max_turns=2)
    conversation = chat.new_conversation(make_images(1)[0])
    conversation.turns = [("first", "a"), ("second", "b")]
    messages = chat._messages(conversation, "third")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0] == {"type": "image"} and messages[0]["content"][1]["text"] == "second"


def test_a_captioner_only_captions():
    model = make_model()
    processor = make_processor()  # the first template: no roles, no answer prompt
    assert not template_has_generation_prompt(processor)
    chat = ChatModel(model, processor, max_new_tokens=4)
    conversation = chat.new_conversation(make_images(1)[0])
    assert isinstance(list(chat.stream(conversation))[-1], Reply)
    again = list(chat.stream(conversation, None, Decoding("beam search", 4)))[-1]
    assert again.image_encoded  # a caption prompt ends with the image: nothing to reuse, and it says so
    with pytest.raises(ValueError, match="only captions .* instruction-tuned"):
        list(chat.stream(conversation, "what is it?"))


def test_decoding_settings_become_generate_arguments():
    assert Decoding("greedy", 5).generate_kwargs() == {"max_new_tokens": 5, "num_beams": 1, "do_sample": False}
    assert Decoding("beam search", 5, num_beams=4).generate_kwargs()["num_beams"] == 4
    sampled = Decoding("sampling", 5, temperature=0.5, top_p=0.8).generate_kwargs()
    assert sampled["do_sample"] and sampled["temperature"] == 0.5 and sampled["top_p"] == 0.8
    with pytest.raises(ValueError, match="choose one of greedy"):
        Decoding("nucleus").generate_kwargs()


def test_beam_search_answers_without_streaming():
    model, processor = make_chat_parts()
    chat = ChatModel(model, processor)
    conversation = chat.new_conversation(make_images(1)[0])
    updates = list(chat.stream(conversation, None, Decoding("beam search", 4, num_beams=2)))
    assert len(updates) == 1 and isinstance(updates[0], Reply)


def test_a_missing_model_folder_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model at outputs/demo/model; run `make demo` first"):
        ChatModel.load()
    with pytest.raises(FileNotFoundError, match="check the path"):
        ChatModel.load(str(tmp_path / "nowhere" / "model"))


# -- the Space's files ---------------------------------------------------------------------------
def test_space_front_matter_and_entry_point():
    readme = (REPO_ROOT / "space" / "README.md").read_text()
    assert readme.startswith("---\n")
    meta = yaml.safe_load(readme.split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["models"] and all("/" in m for m in meta["models"])
    assert {"title", "emoji", "sdk_version"} <= set(meta)
    if importlib.util.find_spec("gradio") is not None:
        import gradio

        assert meta["sdk_version"].split(".")[0] == gradio.__version__.split(".")[0]
    app = (REPO_ROOT / "space" / "app.py").read_text()
    assert "from minivlm.app" in app and meta["models"][0] in app
    requirements = [line.strip() for line in (REPO_ROOT / "space" / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith(("#", "-"))]
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(requirements) == sorted(dependencies)  # the vendored package's own dependencies
    assert not any(line.startswith("gradio") for line in requirements)  # sdk_version installs it


# -- the page in a browser -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _browser_skip_reason() -> str | None:
    missing = [name for name in ("gradio", "playwright") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed: pip install -e '.[app,browser-test]' "
                "(gradio for the app, playwright to drive the browser)")
    if CHROMIUM is None:
        return ("no Chromium: apt-get update && apt-get install -y chromium chromium-driver "
                "(Debian's build; Playwright's own browser downloads are not used)")
    return None


@pytest.mark.skipif(_browser_skip_reason() is not None, reason=str(_browser_skip_reason()))
def test_the_page_captions_an_upload_and_answers_in_chromium(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from minivlm.app.ui import AppArguments, create_app, launch

    started = time.perf_counter()
    model, processor = make_chat_parts()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    image_path = tmp_path / "upload.png"
    image = make_shapes_examples(1, image_size=64, seed=3)[0]["image"]
    image.save(image_path)
    bad_path = tmp_path / "broken.png"
    bad_path.write_bytes(image_path.read_bytes()[:150])
    max_new_tokens = 6
    expected_caption = plain_generate(model, processor, image, "user:<image> assistant:", max_new_tokens)
    assert expected_caption

    demo, chat_model, examples_dir = create_app(AppArguments(model=str(model_dir), max_new_tokens=max_new_tokens, examples=3))
    expected_answer = plain_generate(
        chat_model.model, processor, image,
        f"user:<image> {QUESTION} assistant:", max_new_tokens,
    )
    assert expected_answer and expected_answer != expected_caption  # so a swap would show
    port = _free_port()
    launch(demo, examples_dir, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    screenshot = Path(os.environ.get("MINIVLM_APP_SCREENSHOT", tmp_path / "app.png"))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path), executable_path=CHROMIUM,
                headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900},
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"http://127.0.0.1:{port}/")
                expect(page.get_by_text("captions and answers questions")).to_be_visible()

                # A file cut short: the app's message, not a caption.
                page.locator("#image input[type=file]").set_input_files(str(bad_path))
                toast = page.get_by_test_id("toast-text").first
                expect(toast).to_contain_text("broken.png is damaged or cut short")
                expect(toast).to_contain_text("upload the complete file again")
                page.get_by_test_id("toast-close").first.click()
                expect(toast).to_be_hidden()
                page.locator("#image button[aria-label='Remove Image']").first.click()

                page.locator("#image input[type=file]").set_input_files(str(image_path))
                expect(page.locator("#status")).to_contain_text("Caption:")
                expect(page.locator("#caption textarea")).to_have_value(expected_caption)

                page.locator("#question textarea").fill(QUESTION)
                page.locator("#ask").click()
                expect(page.locator("#status")).to_contain_text("Answer:")
                expect(page.locator("#status")).to_contain_text("image reused from the prefix cache")
                chat_text = page.locator("#chat").inner_text()
                assert QUESTION in chat_text and expected_answer in chat_text
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()

    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1280 and height >= 600
    shot = Image.open(screenshot).convert("L")
    assert len(set(shot.resize((64, 64)).getdata())) > 8  # a rendered page, not a blank one
    print(f"browser test: {time.perf_counter() - started:.1f}s, screenshot {screenshot}")


def test_an_instruction_tuned_config_turns_the_chat_on_and_a_captioner_stays_captions_only():
    config = make_config()
    model, processor = make_model(config), make_processor(config)
    # MiniVLM's template has an empty generation prompt (captioning is the one-turn chat): the
    # template cannot tell a captioner from a model trained on questions, the config does.
    assert not template_has_generation_prompt(processor) and not ChatModel(model, processor).chat
    model.config.instruction_tuned = True
    assert ChatModel(model, processor).chat


# -- what the model understands ---------------------------------------------------------------------
def test_examples_pair_each_image_with_a_question_in_the_sets_words(tmp_path):
    pytest.importorskip("gradio", reason="the page needs gradio: pip install -e '.[app]'")
    from minivlm.app import ui

    pairs = ui.shapes_examples(tmp_path, count=6, image_size=64)
    assert len(pairs) == 6 and all(Path(path).is_file() for path, _ in pairs)
    examples = make_shapes_examples(6, image_size=64, seed=0, split="test")
    for (path, question), example in zip(pairs, examples):
        assert question in [q["question"] for q in example["questions"]]  # a question the set asks of this image
    assert pairs[0][1].startswith("what colour") or pairs[0][1] == examples[0]["questions"][0]["question"]
    assert len({question.split()[0] for _, question in pairs}) >= 3  # several kinds of question, not one


def test_the_page_lists_known_words_and_names_unknown_ones(monkeypatch):
    gr = pytest.importorskip("gradio", reason="the page needs gradio: pip install -e '.[app]'")
    from minivlm.app import ui

    model, processor = make_chat_parts()
    chat = ChatModel(model, processor, max_new_tokens=2)
    words = chat.known_words()
    assert "colour" in words and "circle" in words and "color" not in words
    assert not {"<image>", processor.tokenizer.unk_token, processor.tokenizer.eos_token} & set(words)
    assert chat.unknown_words("What color is the circle?") == ["color"]  # the tokenizer lowercases: "What" is known
    assert "read as unknown: color (" in ui._unknown_note(chat, "What color is the circle?")
    assert ui._unknown_note(chat, "what colour is the shape?") == ""
    page = build_page_text(ui.build_demo(chat, [("a.png", "what colour is the shape?")]))
    assert f"Words this model knows ({len(words)})" in page and "`colour`" in page
    processor.tokenizer.unk_token = None  # a byte-level vocabulary reads any text: nothing to list
    assert chat.known_words() is None and chat.unknown_words("what color") == []


def build_page_text(demo) -> str:
    """Every label and Markdown value of a built page, as text."""
    texts = []
    for block in demo.blocks.values():
        for attribute in ("label", "value"):
            value = getattr(block, attribute, None)
            if isinstance(value, str):
                texts.append(value)
    return "\n".join(texts)
