"""Caption a folder of unlabeled images (or answer one question about each), in batches, to JSONL.

    minivlm-caption photos/ --model org/minivlm --output captions.jsonl
    minivlm-caption "photos/**/*.jpg" --model outputs/demo/model --question "how many shapes are there?"

Each input is a folder (every file under it, recursively) or a glob (quote it, so that the shell
leaves it to this command). Writes one JSON object per image: `{"file", "caption"}`, or
`{"file", "question", "answer"}` with `--question`; the lines come in file order, written batch by
batch. Files that are not readable images (corrupt, another format, too large) are skipped and
listed at the end; the exit status is 1 when no file could be read. An existing `--output` is
kept unless `--overwrite` is given. The outputs equal `pipeline("image-to-text")` (or
`model.query`) image by image: every image of a batch has the same prompt, so nothing is padded.
"""

import glob
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor, HfArgumentParser

from minivlm.app.engine import DEFAULT_MODEL
from minivlm.evaluation.generation import generate_texts


logger = logging.getLogger("minivlm.caption")


@dataclass
class CaptionArguments:
    """Options of `minivlm-caption FOLDER_OR_GLOB [...]` (the folders and globs come first, without a flag)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "A MiniVLM folder or Hub id (default: the model "
                                                                 "`make demo` trains)."})
    output: str = field(default="captions.jsonl", metadata={"help": "The JSONL file to write."})
    overwrite: bool = field(default=False, metadata={"help": "Replace --output if it exists."})
    question: str | None = field(default=None, metadata={"help": "Answer this question about every image instead "
                                                                  "of captioning it."})
    prompt: str = field(default="", metadata={"help": "Text the caption continues (the prompt used in training)."})
    batch_size: int = field(default=16)
    max_new_tokens: int | None = field(default=None, metadata={"help": "Default: the model's generation_config "
                                                                      "(32 for the models this project builds)."})
    num_beams: int | None = field(default=None, metadata={"help": "Default: the model's generation_config (1)."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})
    inputs: list[str] = field(default_factory=list, metadata={"help": "Set from the arguments without a flag."})


def find_files(inputs: list[str], skip: Path | None = None) -> list[Path]:
    """The files the inputs name, sorted and each once: folders recursively (hidden files left out), globs expanded.

    Raises ValueError naming every input that names no file.
    """
    files, empty = {}, []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = [p for p in path.rglob("*")
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
        if not found:
            empty.append(item)
        for p in found:
            if skip is None or p.resolve() != skip.resolve():
                files.setdefault(p.resolve(), p)
    if empty:
        raise ValueError(f"no files in or matching {', '.join(repr(i) for i in empty)}; pass image folders or globs "
                         "(quoted, e.g. \"photos/*.jpg\").")
    return sorted(files.values())


def check_arguments(args: CaptionArguments) -> None:
    """Refuses arguments that cannot work, before the model is loaded."""
    if Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a folder; name a file, e.g. {Path(args.output) / 'captions.jsonl'}.")
    if Path(args.output).exists() and not args.overwrite:
        raise ValueError(f"{args.output} exists; pass --overwrite to replace it, or another --output.")
    for name in ("batch_size", "max_new_tokens", "num_beams"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.question is not None and not args.question.strip():
        raise ValueError("--question is empty; ask something about the images, or leave it out to caption them.")


def prompt_text(processor, args: CaptionArguments) -> str:
    """The prompt every image gets: the question as one user turn (as `model.query`), or the caption prompt."""
    if args.question is None:
        return processor.image_token + args.prompt
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def caption_files(model, processor, files: list[Path], args: CaptionArguments, output) -> list[tuple[Path, str]]:
    """Writes one JSON line per readable file to `output` (a text file); returns the unreadable ones with why."""
    prompt = prompt_text(processor, args)
    bad = []
    progress = tqdm(total=len(files), unit="image", desc="answering" if args.question else "captioning")
    for start in range(0, len(files), args.batch_size):
        batch, images = [], []
        for path in files[start : start + args.batch_size]:
            try:
                images.append(processor.load_image(str(path)))
                batch.append(path)
            except (ValueError, OSError) as error:
                bad.append((path, str(error)))
        if images:
            texts = generate_texts(model, processor, images, [prompt] * len(images), batch_size=len(images),
                                   max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=False)
            for path, text in zip(batch, texts):
                row = ({"file": str(path), "caption": text} if args.question is None
                       else {"file": str(path), "question": args.question, "answer": text})
                output.write(json.dumps(row, ensure_ascii=False) + "\n")
            output.flush()
        progress.update(len(files[start : start + args.batch_size]))
    progress.close()
    return bad


def main(argv: list[str] | None = None) -> None:
    """`minivlm-caption`: exits with status 1 when no file was a readable image."""
    parser = HfArgumentParser(CaptionArguments, usage="minivlm-caption FOLDER_OR_GLOB [FOLDER_OR_GLOB ...] [options]")
    args, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    flags = [item for item in rest if item.startswith("-")]
    if flags:
        parser.error(f"unknown option(s): {' '.join(flags)}")
    args.inputs = [*args.inputs, *rest]
    if not args.inputs:
        parser.error("name the images: minivlm-caption FOLDER_OR_GLOB (e.g. minivlm-caption photos/ or \"photos/*.jpg\")")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_arguments(args)
    files = find_files(args.inputs, skip=Path(args.output))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).to(device).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as output:
        bad = caption_files(model, processor, files, args, output)
    written = len(files) - len(bad)
    if bad:
        logger.warning("Skipped %d file(s) that are not readable images:\n%s", len(bad),
                       "\n".join(f"  {path}: {why}" for path, why in bad))
    logger.info("Wrote %d %s to %s.", written, "answers" if args.question else "captions", args.output)
    if not written:
        sys.exit(1)


if __name__ == "__main__":
    main()
