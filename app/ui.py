"""The Gradio page over `minivlm.app.engine`, and the `minivlm-app` command.

    minivlm-app                                  # the model `make demo` trained (outputs/demo/model)
    minivlm-app --model org/minivlm --port 7860  # any MiniVLM folder or Hub id

Left: the image (upload, drop or paste), its caption streamed as it is written, examples from
the shapes set. Right: the chat about that image and, when an answer holds boxes, the image with
the boxes drawn. Below: the decoding settings, folded. A new image starts a new conversation.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from .engine import (
    DEFAULT_MODEL, LIMITS, MAX_UPLOAD_BYTES, MAX_SESSIONS, SESSION_TTL_S, STRATEGIES, ChatModel, Conversation, Decoding,
    ImageError, Reply, load_image_file,
)
from .boxes import draw_reply_boxes


try:
    import gradio as gr
except ImportError as error:  # gradio is the optional extra `minivlm[app]`
    raise ImportError("the MiniVLM app needs gradio: pip install 'minivlm[app]'") from error


logger = logging.getLogger("minivlm.app")

CSS = """
#caption textarea {font-size: 1.1em}
#status {min-height: 1.5em; color: var(--body-text-color-subdued)}
/* The shapes set is 32-64 px: show small images large and sharp. */
#image img, #boxes img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain}
"""


# The kinds of question the shapes set asks, in the order the examples cycle through them.
EXAMPLE_QUESTION_TYPES = ("colour", "where", "box", "count", "exists", "objects")


def shapes_examples(folder: str | Path, count: int = 6, image_size: int = 64) -> list[tuple[str, str]]:
    """Writes `count` held-out shapes images (the demo's test split, seed 0) as PNGs.

    Returns `(path, question)` pairs: beside each image one of the questions the set asks about it
    (in the words a model trained on it knows), a different kind for each image where it has one.
    """
    from minivlm.processing.shapes import make_shapes_examples

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for index, example in enumerate(make_shapes_examples(count, image_size=image_size, seed=0, split="test")):
        path = folder / f"{example['id']}.png"
        example["image"].save(path)
        wanted = EXAMPLE_QUESTION_TYPES[index % len(EXAMPLE_QUESTION_TYPES)]
        questions = example["questions"]
        question = next((q for q in questions if q["type"] == wanted), questions[0] if questions else None)
        pairs.append((str(path), question["question"] if question else ""))
    return pairs


def _unknown_note(chat_model: ChatModel, question: str) -> str:
    unknown = chat_model.unknown_words(question)
    if not unknown:
        return ""
    return (f" Not in the model's vocabulary, read as unknown: {', '.join(unknown)}"
            " (see \"Words this model knows\").")


def _status(kind: str, reply: Reply) -> str:
    image = "image encoded" if reply.image_encoded else "image reused from the prefix cache"
    boxes = f", {len(reply.boxes)} box(es)" if reply.boxes else ""
    return f"{kind}: {reply.new_tokens} tokens in {reply.seconds:.2f} s ({image}){boxes}."


def _chat_messages(conversation: Conversation | None, pending: tuple[str, str] | None = None) -> list[dict]:
    turns = list(conversation.turns) if conversation is not None else []
    if pending is not None:
        turns.append(pending)
    messages = []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def _boxes_view(conversation: Conversation, reply: Reply):
    if not reply.boxes:
        return gr.Image(value=None, visible=False)
    return gr.Image(value=draw_reply_boxes(conversation.image, reply.boxes), visible=True)


def build_demo(chat_model: ChatModel, examples: list[tuple[str, str] | str] | None = None) -> gr.Blocks:
    """The page: returns a `gr.Blocks` to `launch()`.

    `examples` are shown under the image: `(image path, question)` pairs (the question fills the
    question box of a chat model) or image paths.
    """

    def decoding(strategy, max_new_tokens, num_beams, temperature, top_p) -> Decoding:
        # Raw values: the engine checks them against LIMITS (a request need not come from the sliders).
        return Decoding(strategy, max_new_tokens, num_beams, temperature, top_p)

    def streamed(conversation, question, settings):
        """The engine's stream, its refusals (bounds, an expired conversation) shown as the page's errors."""
        try:
            yield from chat_model.stream(conversation, question, decoding(*settings))
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error

    def on_image(payload, *settings):
        # preprocess=False: the raw upload reaches this function, so a file that is not an image
        # gets this app's message instead of a generic error from the image component.
        if payload is None:
            yield "", None, [], gr.Image(value=None, visible=False), ""
            return
        path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
        if not path:
            raise gr.Error("The upload did not arrive as a file; upload or paste the image again.",
                           title="Bad upload", print_exception=False)
        try:
            decoding(*settings).generate_kwargs()  # refuse bad settings before decoding the upload
        except ValueError as error:
            raise gr.Error(str(error), title="Bad settings", print_exception=False) from error
        try:
            image = load_image_file(path)
        except ImageError as error:
            raise gr.Error(str(error), title="Bad upload", print_exception=False) from error
        conversation = chat_model.new_conversation(image)
        del image  # the conversation keeps the processed pixels and a display copy, not the upload
        yield "", conversation, [], gr.Image(value=None, visible=False), "Captioning…"
        for update in streamed(conversation, None, settings):
            if isinstance(update, Reply):
                yield update.text, conversation, [], _boxes_view(conversation, update), _status("Caption", update)
            else:
                yield update, conversation, [], gr.Image(value=None, visible=False), "Captioning…"

    def on_recaption(conversation, *settings):
        if conversation is None:
            raise gr.Error("Upload or paste an image first.", title="No image", print_exception=False)
        for update in streamed(conversation, None, settings):
            if isinstance(update, Reply):
                yield update.text, _boxes_view(conversation, update), _status("Caption", update)
            else:
                yield update, gr.Image(), "Captioning…"

    def on_ask(question, conversation, *settings):
        if conversation is None:
            raise gr.Error("Upload or paste an image first, then ask about it.", title="No image", print_exception=False)
        if not question or not question.strip():
            raise gr.Error("Type a question about the image.", title="Empty question", print_exception=False)
        for update in streamed(conversation, question, settings):
            if isinstance(update, Reply):
                yield (_chat_messages(conversation), "", _boxes_view(conversation, update),
                       _status("Answer", update) + _unknown_note(chat_model, question))
            else:
                yield _chat_messages(conversation, (question, update)), "", gr.Image(), "Answering…"

    def on_clear(conversation):
        if conversation is not None:
            conversation.turns.clear()
        return [], gr.Image(value=None, visible=False), ""

    mode = ("captions and answers questions" if chat_model.chat
            else "captions images (its chat template has no answer prompt: questions are off)")
    # Uploads left in Gradio's temporary folder are deleted once an hour after an hour (and at restart).
    with gr.Blocks(title=f"MiniVLM: {chat_model.name}", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# MiniVLM: {chat_model.name}\n"
            f"A small vision-language model that {mode}. Upload, drop or paste an image; the caption is "
            "written as it is generated. The image is encoded once per conversation: further questions "
            "reuse it."
        )
        # A session's conversation is dropped (and its memory released) an idle TTL after its last update.
        conversation = gr.State(None, time_to_live=chat_model.session_ttl_s,
                                delete_callback=lambda held: held.release("the session ended") if held else None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image", height=320,
                                 elem_id="image")
                caption = gr.Textbox(label="Caption", interactive=False, lines=2, elem_id="caption")
                recaption = gr.Button("Caption again (with the decoding settings below)", size="sm")
            with gr.Column(scale=1):
                boxes = gr.Image(label="Boxes in the answer", visible=False, interactive=False, height=320,
                                 elem_id="boxes")
                chatbot = gr.Chatbot(label="Chat about the image", height=320, elem_id="chat",
                                     placeholder=None if chat_model.chat else "This model only captions.")
                with gr.Row():
                    question = gr.Textbox(
                        show_label=False, scale=4, elem_id="question", interactive=chat_model.chat,
                        placeholder="Ask about the image…" if chat_model.chat else "Questions need an instruction-tuned MiniVLM.",
                    )
                    ask = gr.Button("Ask", variant="primary", scale=1, interactive=chat_model.chat, elem_id="ask")
                clear = gr.Button("Clear the chat", size="sm")
        status = gr.Markdown(elem_id="status")
        with gr.Accordion("Decoding settings", open=False):
            with gr.Row():
                strategy = gr.Radio(list(STRATEGIES), value="greedy", label="Decoding")
                max_new_tokens = gr.Slider(*LIMITS["max_new_tokens"], value=chat_model.max_new_tokens, step=1,
                                           label="Max new tokens")
            with gr.Row():
                num_beams = gr.Slider(2, LIMITS["num_beams"][1], value=3, step=1, label="Beams (beam search)")
                temperature = gr.Slider(*LIMITS["temperature"], value=0.7, step=0.05, label="Temperature (sampling)")
                top_p = gr.Slider(*LIMITS["top_p"], value=0.9, step=0.05, label="Top-p (sampling)")
        if examples:
            pairs = [(item, "") if isinstance(item, (str, Path)) else tuple(item) for item in examples]
            if chat_model.chat and any(question for _, question in pairs):
                gr.Examples(examples=[[str(path), question] for path, question in pairs], inputs=[image, question],
                            label="Examples: the shapes set, with a question the model was trained to answer")
            else:
                gr.Examples(examples=[[str(path)] for path, _ in pairs], inputs=[image],
                            label="Examples: the shapes set")
        words = chat_model.known_words()
        if words is not None:
            with gr.Accordion(f"Words this model knows ({len(words)})", open=False):
                gr.Markdown("Its tokenizer reads only these words; any other word becomes one unknown token "
                            "that the model cannot tell apart from others.\n\n" + " ".join(f"`{word}`" for word in words),
                            elem_id="vocabulary")

        settings = [strategy, max_new_tokens, num_beams, temperature, top_p]
        image.change(on_image, [image, *settings], [caption, conversation, chatbot, boxes, status],
                     preprocess=False, concurrency_id="model")
        recaption.click(on_recaption, [conversation, *settings], [caption, boxes, status], concurrency_id="model")
        for trigger in (question.submit, ask.click):
            trigger(on_ask, [question, conversation, *settings], [chatbot, question, boxes, status],
                    concurrency_id="model")
        clear.click(on_clear, [conversation], [chatbot, boxes, status])
    # One generation at a time: they share the model and the CPU.
    demo.queue(default_concurrency_limit=1)
    return demo


@dataclass
class AppArguments:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "A MiniVLM folder or Hub id (default: the model "
                                                                 "`make demo` trains)."})
    mode: str = field(default="auto", metadata={"help": "'auto' (chat when the model's config says it was trained on "
                                                        "questions, `instruction_tuned`, or its chat template writes an "
                                                        "answer prompt; captions only otherwise), 'caption' or 'chat'.",
                                                "choices": ["auto", "caption", "chat"]})
    caption_prompt: str = field(default="", metadata={"help": "Text after the image that asks for a caption."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Default of the page's max new tokens "
                                                                      "(default: the model's generation_config)."})
    max_turns: int = field(default=3, metadata={"help": "Questions and answers kept in the prompt."})
    max_sessions: int = field(default=MAX_SESSIONS, metadata={"help": "Conversations held at once; the least "
                                                                       "recently used beyond that are released."})
    session_ttl_min: float = field(default=SESSION_TTL_S / 60, metadata={"help": "Minutes an idle conversation "
                                                                                  "is kept."})
    examples: int = field(default=6, metadata={"help": "Shapes-set images offered as examples (0: none)."})
    host: str | None = field(default=None, metadata={"help": "Address to serve on (default: Gradio's, "
                                                              "GRADIO_SERVER_NAME or 127.0.0.1)."})
    port: int | None = field(default=None, metadata={"help": "Port (default: GRADIO_SERVER_PORT or 7860)."})
    share: bool = field(default=False, metadata={"help": "Also serve through a public Gradio link."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})


def create_app(args: AppArguments) -> tuple[gr.Blocks, ChatModel, Path | None]:
    """Loads the model and builds the page; returns it with the model and the examples' folder."""
    chat = {"auto": None, "caption": False, "chat": True}[args.mode]
    chat_model = ChatModel.load(args.model, device=args.device, chat=chat, caption_prompt=args.caption_prompt,
                                max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                                max_sessions=args.max_sessions, session_ttl_s=args.session_ttl_min * 60)
    examples_dir = None
    examples = []
    if args.examples > 0:
        examples_dir = Path(tempfile.mkdtemp(prefix="minivlm-examples-"))
        examples = shapes_examples(examples_dir, args.examples, image_size=max(64, min(chat_model.image_size, 224)))
    return build_demo(chat_model, examples), chat_model, examples_dir


def launch(demo: gr.Blocks, examples_dir: Path | None = None, **kwargs):
    """`demo.launch(**kwargs)` with the page's style, its examples' folder allowed, and uploads over
    `MAX_UPLOAD_BYTES` refused by the server before they reach its temporary folder."""
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # system fonts: no font download
    kwargs.setdefault("max_file_size", MAX_UPLOAD_BYTES)
    return demo.launch(css=CSS, theme=theme, allowed_paths=[str(examples_dir)] if examples_dir else None, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """`minivlm-app`: loads the model and serves the page until interrupted."""
    (args,) = HfArgumentParser(AppArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    demo, _, examples_dir = create_app(args)
    launch(demo, examples_dir, server_name=args.host, server_port=args.port, share=args.share)


__all__ = ["AppArguments", "build_demo", "create_app", "launch", "main", "shapes_examples"]
