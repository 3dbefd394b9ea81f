"""The one data entry point (`minivlm.processing.loading`): every format the same way, the rows each format
and seed give pinned against expectations written from the files, the format registry as the only place a
format is declared, and data that depends on nothing downstream of it."""

import ast
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import make_images

from minivlm.processing import loading
from minivlm.processing.loading import DatasetFormat, detect_format, load_training_data, register_format
from minivlm.processing.shapes import generate_shapes_dataset
from minivlm.training.run import DataArguments, load_data, parse_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loading") / "shapes"
    return generate_shapes_dataset(folder, num_train=9, num_validation=5, num_test=0, image_size=32, seed=4)


def metadata(folder, split):
    return [json.loads(line) for line in (Path(folder) / split / "metadata.jsonl").read_text().splitlines() if line]


def seeded_subset(rows, n, seed):
    """The notebook's `shuffle(seed).select(range(n))`, written with numpy: the row order it picks."""
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))[:n]]


def texts(message):
    return [part["text"] for part in message["content"] if part["type"] == "text"]


def test_the_shapes_set_gives_the_seeded_rows_of_its_metadata_in_order(shapes):
    data = load_training_data("shapes", shapes_dir=shapes, max_train_samples=6, max_eval_samples=3, seed=7)
    expected = seeded_subset(metadata(shapes, "train"), 6, seed=7)
    assert data.train.column_names == ["image", "captions", "id"]
    assert data.train["id"] == [r["id"] for r in expected]
    assert data.train["captions"] == [r["captions"] for r in expected]
    assert [Path(i["path"]).name for i in data.train.cast_column("image", datasets.Image(decode=False))["image"]] \
        == [r["file_name"] for r in expected]
    evaluation = seeded_subset(metadata(shapes, "validation"), 3, seed=7)
    assert data.evaluation["id"] == [r["id"] for r in evaluation]
    assert data.evaluation["objects"] == [r["objects"] for r in evaluation]  # shapes_accuracy needs them
    assert data.formats == ["captions"] and data.eval_source == str(shapes)
    # Naming the format gives the same rows, in the training view (which mixes with conversations).
    named = load_training_data("shapes", dataset_format="captions", shapes_dir=shapes, max_train_samples=6,
                               max_eval_samples=3, seed=7)
    assert named.train["id"] == data.train["id"] and named.train["captions"] == data.train["captions"]
    assert named.train["messages"] == [[]] * 6 and named.evaluation.to_dict() == data.evaluation.to_dict()


def test_shapes_instruct_rows_hold_each_images_captions_and_its_questions_in_order(shapes):
    data = load_training_data("shapes", dataset_format="shapes-instruct", shapes_dir=shapes, max_train_samples=5,
                              max_eval_samples=2, seed=3)
    expected = seeded_subset(metadata(shapes, "train"), 5, seed=3)
    assert data.train["id"] == [r["id"] for r in expected]
    assert data.train["captions"] == [r["captions"] for r in expected]
    for row, record in zip(data.train, expected):
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * len(record["questions"])
        assert [texts(m) for m in row["messages"][0::2]] == [[q["question"]] for q in record["questions"]]
        assert [texts(m) for m in row["messages"][1::2]] == [[q["answer"]] for q in record["questions"]]
        assert row["messages"][0]["content"][0]["type"] == "image" and len(row["images"]) == 1
    evaluation = seeded_subset(metadata(shapes, "validation"), 2, seed=3)
    assert data.evaluation["id"] == [r["id"] for r in evaluation]
    assert data.eval_objects == {r["id"]: r["objects"] for r in metadata(shapes, "validation")}
    assert data.formats == ["shapes-instruct"]


@pytest.fixture
def caption_folder(tmp_path):
    """A caption imagefolder without ids: 7 training rows (row 2 has only an empty caption), 3 validation rows."""
    for split, count in (("train", 7), ("validation", 3)):
        folder = tmp_path / "captions" / split
        folder.mkdir(parents=True)
        lines = []
        for index, image in enumerate(make_images(count, size=12, seed=len(split))):
            image.save(folder / f"{index:02d}.png")
            caption = "   " if index == 2 else f"  picture number {index}\n"
            lines.append(json.dumps({"file_name": f"{index:02d}.png", "caption": caption}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "captions"


@pytest.mark.parametrize("fmt", [None, "captions", "auto"])
def test_a_caption_imagefolder_gives_its_seeded_rows_ids_from_the_full_split(caption_folder, fmt):
    data = load_training_data(str(caption_folder), dataset_format=fmt, max_train_samples=5, seed=11,
                              max_bad_fraction=0.5)
    picked = [int(i) for i in np.random.default_rng(11).permutation(7)[:5]]
    kept = [i for i in picked if i != 2]  # the row without a caption is dropped
    assert ("messages" in data.train.column_names) == (fmt is not None)  # a named format: the training view
    assert data.train["id"] == [str(i) for i in kept]  # the row's index in the whole split, not in the subset
    assert data.train["captions"] == [[f"picture number {i}"] for i in kept]
    assert data.evaluation["captions"] == [[f"picture number {i}"] for i in (0, 1)]  # validation row 2 dropped
    assert data.formats == ["captions"] and data.eval_objects is None


def test_every_split_is_read_once(caption_folder, monkeypatch):
    calls = []
    original = datasets.load_dataset

    def counting(*args, **kwargs):
        calls.append(kwargs.get("split"))
        return original(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", counting)
    load_training_data(str(caption_folder), dataset_format="captions", max_bad_fraction=0.5)
    assert calls == ["train", "validation"]
    calls.clear()  # one source in two formats: still one read of each split
    data = load_training_data([str(caption_folder)] * 2, dataset_format=["captions", "auto"], max_bad_fraction=0.5)
    assert calls == ["train", "validation"] and len(data.train) == 2 * 6


def test_the_dataset_format_help_lists_every_registered_format(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # no line breaks inside a name (argparse breaks at hyphens)
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "shapes-instruct" in shown
    for fmt in loading.DATASET_FORMATS.values():
        assert f"{fmt.name}: {' '.join(fmt.help.split())}" in shown


@pytest.fixture
def riddles(tmp_path):
    """A toy format no built-in adapter reads: images with a `riddle` and its `solution`."""
    images = make_images(4, size=12)
    for index, image in enumerate(images):
        image.save(tmp_path / f"{index}.png")
    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / f"{i}.png") for i in range(4)],
                                     "riddle": [f"riddle {i}?" for i in range(4)],
                                     "solution": [f"answer {i}" for i in range(4)]}).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "riddles"))
    return str(tmp_path / "riddles")


def riddle_conversations(raw: datasets.Dataset, options) -> datasets.Dataset:
    from minivlm.processing.conversations import CONVERSATION_FEATURES

    rows = [{"messages": [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": q}]},
                          {"role": "assistant", "content": [{"type": "text", "text": a}]}],
             "images": [image], "id": str(index)}
            for index, (image, q, a) in enumerate(zip(raw.cast_column("image", datasets.Image(decode=False))["image"],
                                                      raw["riddle"], raw["solution"]))]
    return datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES)


def test_a_format_registered_in_one_place_is_detected_and_trained_on(riddles, monkeypatch):
    monkeypatch.setattr(loading, "DATASET_FORMATS", dict(loading.DATASET_FORMATS))  # the test's own registry
    with pytest.raises(ValueError, match="unknown --dataset_format.*'riddles'"):
        load_training_data(riddles, dataset_format="riddles")
    assert detect_format(datasets.load_from_disk(riddles)["train"]) == "captions"  # nothing claims it yet
    register_format(DatasetFormat("riddles", "image + riddle + solution", riddle_conversations,
                                  detect=lambda columns: "riddle" in columns))
    assert detect_format(datasets.load_from_disk(riddles)["train"]) == "riddles"
    for fmt in ("riddles", "auto"):
        data = load_training_data(riddles, dataset_format=fmt, seed=0)
        assert data.formats == ["riddles"] and len(data.train) == 4 and len(data.evaluation) == 1
        assert [m["content"][-1]["text"] for m in data.train[1]["messages"]] == ["riddle 1?", "answer 1"]
    # The command line's path reaches it unchanged: --dataset_format riddles.
    args = DataArguments(dataset=riddles, dataset_format="riddles", eval_split=None, max_train_samples=2)
    assert len(load_data(args, seed=0).train) == 2
    assert "riddles: image + riddle + solution" in loading.format_help()


def test_a_format_name_the_command_line_could_not_pass_is_refused():
    for name in ("auto", "a,b", ""):
        with pytest.raises(ValueError, match="cannot name a format"):
            register_format(DatasetFormat(name, "", riddle_conversations))


def imported_modules(path: Path, package: str) -> list[str]:
    """The absolute module names a file imports (relative imports resolved against `package`)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def downstream_imports(path: Path) -> list[str]:
    downstream = ("minivlm.training", "minivlm.evaluation", "minivlm.benchmark", "minivlm.scripts", "minivlm.app",
                  "minivlm.export")
    return [name for name in imported_modules(path, "minivlm.processing")
            if any(name == d or name.startswith(d + ".") for d in downstream)]


def test_the_data_side_imports_nothing_from_training_or_evaluation(tmp_path):
    files = sorted((ROOT / "processing").glob("*.py"))
    assert len(files) >= 8
    assert {f.name: downstream_imports(f) for f in files if downstream_imports(f)} == {}
    # The scan sees relative and function-level imports too.
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..training import run\n    import minivlm.evaluation.tasks\n")
    assert downstream_imports(probe) == ["minivlm.training", "minivlm.training.run", "minivlm.evaluation.tasks"]


def test_evaluation_reads_splits_through_public_data_functions():
    private = {}
    for path in sorted((ROOT / "evaluation").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minivlm.processing"):
                names = [a.name for a in node.names if a.name.startswith("_")]
                if names:
                    private[path.name] = names
    assert private == {}
