"""Dataset adapters (uniform view image/captions/id) and bad-data handling, all offline and tiny."""

import io
import json
import logging
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from minivlm.processing.adapters import FLICKR8K, BadDataError, clean_caption_dataset, load_caption_dataset, to_caption_dataset
from minivlm.processing_minivlm import to_rgb
from minivlm.processing.shapes import generate_shapes_dataset


UNIFORM_FEATURES = datasets.Features(
    {"image": datasets.Image(), "captions": datasets.List(datasets.Value("string")), "id": datasets.Value("string")}
)
ODD_MODES = ("1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "F")


def rgb_image(seed: int = 0, size: tuple[int, int] = (12, 10)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def odd_mode_image(mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.arange(120, dtype=np.uint16).reshape(10, 12) * 500)
    if mode == "F":
        return Image.fromarray(np.linspace(-1.0, 3.0, 120, dtype=np.float32).reshape(10, 12))
    return rgb_image().convert(mode)


def flickr_like(n: int = 4) -> datasets.Dataset:
    """Flickr8k's shape: image plus caption_0..caption_4, no id column."""
    data = {"image": [rgb_image(i, (12 + i, 10)) for i in range(n)]}
    for k in range(5):
        data[f"caption_{k}"] = [f"  image {i} caption {k} \n" for i in range(n)]
    return datasets.Dataset.from_dict(data)


# ----------------------------------------------------------------------------- the uniform view


def test_flickr8k_columns_become_uniform_view():
    ds = to_caption_dataset(flickr_like(4))
    assert ds.column_names == ["image", "captions", "id"]
    assert ds.features == UNIFORM_FEATURES
    assert ds["id"][:] == ["0", "1", "2", "3"]
    assert ds[2]["captions"] == [f"image 2 caption {k}" for k in range(5)]  # stripped, in column order
    assert ds[3]["image"].size == (15, 10)


def test_list_caption_column_with_explicit_id_column():
    source = datasets.Dataset.from_dict({
        "picture": [rgb_image(0), rgb_image(1)],
        "refs": [["a dog", " a cat "], ["one"]],
        "image_id": [17, 42],
        "image": ["not", "images"],  # a stray column of that name must not win over image_column
    })
    ds = to_caption_dataset(source, image_column="picture", caption_column="refs", id_column="image_id")
    assert ds.features == UNIFORM_FEATURES
    assert ds["captions"][:] == [["a dog", "a cat"], ["one"]]
    assert ds["id"][:] == ["17", "42"]
    assert np.array_equal(np.asarray(ds[1]["image"]), np.asarray(rgb_image(1)))


def test_single_string_caption_column_and_list_of_columns():
    source = datasets.Dataset.from_dict({"image": [rgb_image(0)], "text": [" a red circle "], "alt": ["b"]})
    assert to_caption_dataset(source)["captions"][:] == [["a red circle"]]
    assert to_caption_dataset(source, caption_column=["alt", "text"])["captions"][:] == [["b", "a red circle"]]


@pytest.mark.parametrize("columns, expected", [
    (["captions", "caption", "text"], ["captions"]),
    (["caption", "caption_0", "text"], ["caption"]),
    (["caption_10", "caption_2", "caption_0", "text"], ["caption_0", "caption_2", "caption_10"]),
    (["text", "sentences"], ["text"]),
    (["sentences"], ["sentences"]),
])
def test_caption_column_auto_detection(columns, expected):
    data = {"image": [rgb_image(0)]} | {c: [f"<{c}>"] for c in columns}
    ds = to_caption_dataset(datasets.Dataset.from_dict(data))
    assert ds["captions"][:] == [[f"<{c}>" for c in expected]]


def test_missing_columns_are_errors_that_list_the_columns():
    source = datasets.Dataset.from_dict({"image": [rgb_image(0)], "label": ["x"], "score": [1]})
    with pytest.raises(ValueError, match=r"no caption column.*'label', 'score'.*caption_column"):
        to_caption_dataset(source)
    with pytest.raises(ValueError, match=r"'descr' not found.*\['image', 'label', 'score'\].*--caption_column"):
        to_caption_dataset(source, caption_column=["label", "descr"])
    with pytest.raises(ValueError, match=r"'img' not found.*--image_column"):
        to_caption_dataset(source, image_column="img", caption_column="label")
    with pytest.raises(ValueError, match=r"'uid' not found.*--id_column"):
        to_caption_dataset(source, caption_column="label", id_column="uid")
    with pytest.raises(ValueError, match=r"'score' holds Value\('int64'\)"):
        to_caption_dataset(source, caption_column="score")


def test_path_column_becomes_image_feature(tmp_path):
    rgb_image(3).save(tmp_path / "a.png")
    source = datasets.Dataset.from_dict({"file": [str(tmp_path / "a.png")], "caption": ["x"]})
    ds = to_caption_dataset(source, image_column="file")
    assert ds.features == UNIFORM_FEATURES
    assert np.array_equal(np.asarray(ds[0]["image"]), np.asarray(rgb_image(3)))


# ----------------------------------------------------------------------------- loading splits


def test_shapes_imagefolder_loads_every_split(tmp_path, caplog):
    root = generate_shapes_dataset(tmp_path / "shapes", num_train=20, num_validation=5, num_test=5, image_size=32)
    for split, n in (("train", 20), ("validation", 5), ("test", 5)):
        ds = load_caption_dataset(str(root), split, cache_dir=str(tmp_path / "cache"))
        metadata = [json.loads(line) for line in (root / split / "metadata.jsonl").read_text().splitlines()]
        assert ds.features == UNIFORM_FEATURES
        assert len(ds) == n
        assert sorted(ds["id"]) == sorted(m["id"] for m in metadata)
        by_id = {m["id"]: m["captions"] for m in metadata}
        assert all(len(c) == 5 and c == by_id[i] for c, i in zip(ds["captions"], ds["id"]))
        assert ds[0]["image"].size == (32, 32)
    with caplog.at_level(logging.WARNING, logger="minivlm.processing.adapters"):
        cleaned = clean_caption_dataset(ds, split_name="test")  # the synthetic set is all good: no warning
    assert len(cleaned) == 5 and cleaned.features == UNIFORM_FEATURES
    assert not [r for r in caplog.records if r.name == "minivlm.processing.adapters"]
    with pytest.raises(ValueError, match=r"unknown split 'dev'.*\['train', 'validation', 'test'\]"):
        load_caption_dataset(str(root), "dev", cache_dir=str(tmp_path / "cache"))


@pytest.fixture
def saved_dataset_dir(tmp_path) -> Path:
    """A save_to_disk DatasetDict: 50 train rows in Flickr8k's shape, an empty validation split."""
    train = flickr_like(50)
    # Emptied with filter: datasets 5.2 cannot load back an empty split saved from select([]) or from_dict.
    empty = train.filter(lambda caption: False, input_columns="caption_0")
    datasets.DatasetDict({"train": train, "validation": empty}).save_to_disk(tmp_path / "saved")
    return tmp_path / "saved"


def test_empty_and_unknown_splits_are_errors(saved_dataset_dir):
    with pytest.raises(ValueError, match=r"split 'validation' .* has no rows"):
        load_caption_dataset(str(saved_dataset_dir), "validation")
    with pytest.raises(ValueError, match=r"unknown split 'test'.*\['train', 'validation'\]"):
        load_caption_dataset(str(saved_dataset_dir), "test")
    with pytest.raises(BadDataError, match="split 'eval' is empty"):
        clean_caption_dataset(to_caption_dataset(flickr_like(2)).select([]), split_name="eval")


def test_max_samples_is_the_notebooks_seeded_subset(saved_dataset_dir):
    ds = load_caption_dataset(str(saved_dataset_dir), "train", max_samples=10)
    expected = np.random.default_rng(42).permutation(50)[:10]  # what Dataset.shuffle(seed=42) draws
    assert ds["id"][:] == [str(i) for i in expected]  # ids are rows of the full split
    notebook = flickr_like(50).shuffle(seed=42).select(range(10))
    assert [c[0] for c in ds["captions"]] == [c.strip() for c in notebook["caption_0"]]
    assert load_caption_dataset(str(saved_dataset_dir), max_samples=10)["id"][:] == ds["id"][:]
    other = load_caption_dataset(str(saved_dataset_dir), max_samples=10, seed=0)["id"][:]
    assert other != ds["id"][:] and len(other) == 10
    assert len(load_caption_dataset(str(saved_dataset_dir), max_samples=500)) == 50


def test_hub_code_path_reads_a_local_parquet_repo(tmp_path):
    """The `load_dataset(id, config, split=...)` path, fed a Hub-style repo folder instead of an id."""
    (tmp_path / "repo" / "data").mkdir(parents=True)
    flickr_like(6).to_parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    flickr_like(3).to_parquet(tmp_path / "repo" / "data" / "validation-00000-of-00001.parquet")
    ds = load_caption_dataset(str(tmp_path / "repo"), "validation", cache_dir=str(tmp_path / "cache"))
    assert ds.features == UNIFORM_FEATURES
    assert ds["id"][:] == ["0", "1", "2"] and ds[1]["captions"][4] == "image 1 caption 4"
    with pytest.raises(ValueError, match=r"unknown split 'test'.*'train', 'validation'"):
        load_caption_dataset(str(tmp_path / "repo"), "test", cache_dir=str(tmp_path / "cache"))


@pytest.mark.skipif(not datasets.config.HF_HUB_OFFLINE, reason="must not reach the Hub")
def test_flickr8k_hub_id_loads_offline_from_the_datasets_cache(tmp_path):
    """The Hub id path as users run it, answered by a cache laid out as a prior download leaves it."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    for split, n in (("train", 8), ("validation", 3)):
        flickr_like(n).to_parquet(tmp_path / "src" / f"{split}.parquet")
    builder = Parquet(cache_dir=str(tmp_path / "build"), dataset_name="flickr8k", hash="0123abcd",
                      data_files={s: str(tmp_path / "src" / f"{s}.parquet") for s in ("train", "validation")})
    builder.download_and_prepare()
    shutil.copytree(builder.cache_dir, tmp_path / "cache" / "jxie___flickr8k" / "default" / "0.0.0" / "0123abcd")
    ds = load_caption_dataset(FLICKR8K, "train", max_samples=4, cache_dir=str(tmp_path / "cache"))
    assert ds.features == UNIFORM_FEATURES
    assert ds["id"][:] == [str(i) for i in np.random.default_rng(42).permutation(8)[:4]]
    assert ds[0]["captions"] == [f"image {ds[0]['id']} caption {k}" for k in range(5)]


# ----------------------------------------------------------------------------- bad data


def write_bad_imagefolder(root: Path) -> tuple[Path, dict[str, str]]:
    """An imagefolder split mixing good files (any mode) with every kind of bad one.

    Returns the folder and {id: expected drop reason} for the rows that must go.
    """
    split = root / "train"
    split.mkdir(parents=True)
    records, bad = [], {}

    def add(uid: str, file_name: str, payload: bytes | None, captions=("a caption", "another"), reason=None):
        if payload is not None:
            (split / file_name).write_bytes(payload)
        records.append({"file_name": file_name, "id": uid, "captions": list(captions)})
        if reason:
            bad[uid] = reason

    for i in range(10):
        add(f"good{i}", f"good{i}.png", encode(rgb_image(i)))
    for mode in ODD_MODES:  # CMYK has no PNG form; F needs TIFF
        fmt = {"CMYK": "JPEG", "F": "TIFF"}.get(mode, "PNG")
        add(f"mode_{mode}", f"mode_{mode.replace(';', '')}.{fmt.lower()}", encode(odd_mode_image(mode), fmt))
    add("some_empty", "some_empty.png", encode(rgb_image(20)), captions=["", " a dog ", "   ", "a cat"])
    add("all_empty", "all_empty.png", encode(rgb_image(21)), captions=["", " \t", "\n"], reason="no non-empty caption")
    png, jpeg = encode(rgb_image(22, (64, 48))), encode(rgb_image(23, (64, 48)), "JPEG")
    add("cut_png", "cut_png.png", png[: len(png) // 2], reason="truncated image")
    add("cut_jpeg", "cut_jpeg.jpg", jpeg[: len(jpeg) // 2], reason="truncated image")
    add("zero", "zero.png", b"", reason="empty file")
    add("corrupt", "corrupt.jpg", b"\xff\xd8\xff" + b"definitely not jpeg data" * 20, reason="undecodable image")
    add("gone", "gone.png", None, reason="missing file")
    (split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return split, bad


def test_clean_drops_bad_rows_keeps_odd_modes_and_warns_once(tmp_path, caplog):
    _, bad = write_bad_imagefolder(tmp_path / "bad")
    ds = load_caption_dataset(str(tmp_path / "bad"), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 25
    with caplog.at_level(logging.WARNING, logger="minivlm.processing.adapters"):
        cleaned = clean_caption_dataset(ds, max_bad_fraction=0.5)
    assert sorted(cleaned["id"]) == sorted(set(ds["id"]) - set(bad))
    assert cleaned.features == UNIFORM_FEATURES
    warnings_ = [r.getMessage() for r in caplog.records if r.name == "minivlm.processing.adapters" and r.levelname == "WARNING"]
    assert len(warnings_) == 1
    assert ("dropped 6 of 25 examples (2 truncated image, 1 no non-empty caption, 1 empty file, "
            "1 undecodable image, 1 missing file); removed 2 empty captions from kept examples") in warnings_[0]
    rows = {row["id"]: row for row in cleaned}
    assert rows["some_empty"]["captions"] == ["a dog", "a cat"]
    for mode in ODD_MODES:  # decodable afterwards, in its own mode, and the processor's RGB conversion works
        assert rows[f"mode_{mode}"]["image"].mode == mode
        assert to_rgb(rows[f"mode_{mode}"]["image"]).mode == "RGB"


def test_too_many_bad_rows_raise_naming_ids_and_the_threshold(tmp_path):
    write_bad_imagefolder(tmp_path / "bad")
    ds = load_caption_dataset(str(tmp_path / "bad"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(BadDataError, match=r"6 of 25 examples \(24.0%\) in split 'train' are bad") as info:
        clean_caption_dataset(ds)  # default max_bad_fraction=0.05
    message = str(info.value)
    assert "id 'all_empty': no non-empty caption" in message and "id 'zero': empty file" in message
    assert "cut_png.png" in message and "--max_bad_fraction" in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(BadDataError, match="no examples left in split 'train'"):
        clean_caption_dataset(ds.filter(lambda uid: uid in {"zero", "gone"}, input_columns="id"),
                              max_bad_fraction=1.0)


def test_clean_in_memory_bytes_and_path_column(tmp_path):
    """Embedded bytes (as from the Hub) and a path column pointing at a deleted file."""
    jpeg = encode(rgb_image(5, (40, 30)), "JPEG")
    images = [*(odd_mode_image(m) for m in ODD_MODES), {"bytes": jpeg[:-200], "path": None},
              {"bytes": b"garbage" * 9, "path": None}, {"bytes": b"", "path": None}, None, {"bytes": jpeg, "path": None}]
    source = datasets.Dataset.from_dict(
        {"image": images, "caption": [f"c{i}" for i in range(len(images))]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    with pytest.raises(BadDataError, match=r"id '8': truncated image; id '9': undecodable image; "
                                           r"id '10': empty file; id '11': missing image\. "):
        clean_caption_dataset(to_caption_dataset(source))
    cleaned = clean_caption_dataset(to_caption_dataset(source), max_bad_fraction=0.5)
    assert cleaned["id"][:] == [str(i) for i in range(8)] + ["12"]
    assert [im.mode for im in cleaned["image"]][:8] == list(ODD_MODES)

    rgb_image(0).save(tmp_path / "kept.png")
    rgb_image(1).save(tmp_path / "deleted.png")
    paths = datasets.Dataset.from_dict({"path": [str(tmp_path / "kept.png"), str(tmp_path / "deleted.png")],
                                        "text": ["kept", "deleted"]})
    view = to_caption_dataset(paths, image_column="path")
    (tmp_path / "deleted.png").unlink()
    with pytest.raises(BadDataError, match=r"id '1': missing file \(.*deleted.png\)"):
        clean_caption_dataset(view)
    assert clean_caption_dataset(view, max_bad_fraction=0.5)["captions"][:] == [["kept"]]


def test_a_single_saved_split_serves_any_split(tmp_path, caplog):
    flickr_like(3).save_to_disk(tmp_path / "one")
    assert load_caption_dataset(str(tmp_path / "one"))["id"][:] == ["0", "1", "2"]
    with caplog.at_level(logging.WARNING, logger="minivlm.processing.adapters"):
        assert len(load_caption_dataset(str(tmp_path / "one"), "test")) == 3
    assert "holds a single saved split; using it as split 'test'" in caplog.text


def test_max_bad_fraction_is_an_inclusive_limit(caplog):
    source = to_caption_dataset(flickr_like(20))
    one_bad = source.map(lambda c, i: {"captions": [" "] if i == 7 else c}, input_columns="captions", with_indices=True)
    with caplog.at_level(logging.WARNING, logger="minivlm.processing.adapters"):
        assert "7" not in clean_caption_dataset(one_bad)["id"]  # 1/20 = 5%: not more than the default
    assert "dropped 1 of 20 examples (1 no non-empty caption)" in caplog.text
    two_bad = one_bad.map(lambda c, i: {"captions": [] if i == 3 else c}, input_columns="captions", with_indices=True)
    with pytest.raises(BadDataError, match=r"2 of 20 .*id '3': no non-empty caption; id '7'"):
        clean_caption_dataset(two_bad)
    assert len(clean_caption_dataset(two_bad, max_bad_fraction=0.1)) == 18


# -- the one entry point: resolve, load, clean, attach what the scorers need ---------------------------
def test_resolve_generates_the_shapes_set_once_and_passes_other_names_through(tmp_path):
    from minivlm.processing.loading import resolve_dataset

    assert resolve_dataset("jxie/flickr8k", shapes_dir=tmp_path / "unused") == "jxie/flickr8k"
    assert not (tmp_path / "unused").exists()
    folder = tmp_path / "shapes"
    with pytest.raises(FileNotFoundError, match=r"no shapes split 'test' in .*python -m minivlm.processing.shapes"):
        resolve_dataset("shapes", shapes_dir=folder, split="test", generate=False)
    assert resolve_dataset("shapes", shapes_dir=folder, num_train=3, num_eval=2, image_size=32) == str(folder)
    records = (folder / "validation" / "metadata.jsonl").read_text().splitlines()
    assert len(records) == 2 and len(list((folder / "train").glob("*.png"))) == 3
    stamp = (folder / "train" / "metadata.jsonl").stat().st_mtime_ns
    assert resolve_dataset("shapes", shapes_dir=folder, num_train=5) == str(folder)  # present: not regenerated
    assert (folder / "train" / "metadata.jsonl").stat().st_mtime_ns == stamp


def test_load_training_data_attaches_the_shapes_objects_to_the_evaluation_split(tmp_path):
    from minivlm.processing.loading import load_training_data

    folder = generate_shapes_dataset(tmp_path / "shapes", num_train=6, num_validation=4, num_test=0, image_size=32)
    data = load_training_data("shapes", shapes_dir=folder, max_eval_samples=3, seed=1)
    train, evaluation = data.train, data.evaluation
    assert train.column_names == ["image", "captions", "id"] and len(train) == 6
    assert evaluation.column_names == ["image", "captions", "id", "objects"] and len(evaluation) == 3
    records = {r["id"]: r for r in map(json.loads, (folder / "validation" / "metadata.jsonl").read_text().splitlines())}
    for example in evaluation:
        assert example["objects"] == records[example["id"]]["objects"]
    assert data.eval_objects == {str(i): r["objects"] for i, r in records.items()}
    # A missing evaluation split is no error: training goes on without evaluation.
    assert load_training_data(str(folder), eval_split="test").evaluation is None
