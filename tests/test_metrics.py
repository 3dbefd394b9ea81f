"""Caption metrics: parity with pycocoevalcap (the COCO caption evaluation) and offline loading.

pycocoevalcap is a test-only dependency here; tests that need Java skip (with a reason) without it,
except in CI, where conftest.py stops the session instead (see test_ci.py).
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pycocoevalcap = pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "evaluation" / "metrics" / "caption_metrics"
MODULE_FILE = MODULE_DIR / "caption_metrics.py"
HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="java is not installed (needed by pycocoevalcap's jars)")

# Load the module file directly: it is exactly what `evaluate.load` copies, and this keeps the
# scorer tests independent of the rest of the `processing` package.
_spec = importlib.util.spec_from_file_location("caption_metrics_under_test", MODULE_FILE)
cm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cm)

VOCAB = "a the dog dogs man woman girl runs running jumps in on grass water red ball with".split()
KEYS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def random_corpus(rng: random.Random) -> tuple[list[list[str]], list[list[list[str]]]]:
    """1-10 images with 1-5 references each; small vocabulary so n-grams and words repeat.

    References are edits of a per-image base sentence and most candidates are edits of a reference,
    so higher-order n-grams match often; some candidates are random or empty (0 words).
    """

    def edit(words: list[str]) -> list[str]:
        out = list(words)
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(len(out) + 1)
            op = rng.random()
            if op < 0.4 and i < len(out):
                out[i] = rng.choice(VOCAB)
            elif op < 0.7 and i < len(out):
                del out[i]
            else:
                out.insert(i, rng.choice(VOCAB))
        return out

    hyps, refs = [], []
    for _ in range(rng.randint(1, 10)):
        base = [rng.choice(VOCAB) for _ in range(rng.randint(1, 14))]
        image_refs = [edit(base) or base for _ in range(rng.randint(1, 5))]
        r = rng.random()
        if r < 0.05:
            hyp = []
        elif r < 0.3:
            hyp = [rng.choice(VOCAB) for _ in range(rng.randint(1, 14))]
        else:
            hyp = edit(rng.choice(image_refs))
        hyps.append(hyp)
        refs.append(image_refs)
    return hyps, refs


def coco_reference(hyps, refs) -> dict[str, float]:
    """pycocoevalcap's scores of whitespace-joined token lists."""
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {
        **{f"bleu_{k + 1}": float(bleu[k]) for k in range(4)},
        "rouge_l": float(Rouge().compute_score(gts, res)[0]),
        "cider": float(Cider().compute_score(gts, res)[0]),
    }


def ours(hyps, refs) -> dict[str, float]:
    b = cm.bleu_scores(hyps, refs, 4)
    return {**{f"bleu_{k + 1}": b[k] for k in range(4)}, "rouge_l": cm.rouge_l(hyps, refs), "cider": cm.cider_d(hyps, refs)}


def assert_same(mine: dict, ref: dict, context: object = "") -> None:
    for key in KEYS:
        assert close(mine[key], ref[key]), f"{key}: ours={mine[key]!r} pycocoevalcap={ref[key]!r} {context}"


# ---------------------------------------------------------------------------------------------
# BLEU / ROUGE-L / CIDEr-D parity
# ---------------------------------------------------------------------------------------------
def test_scorers_match_pycocoevalcap_on_random_corpora():
    rng = random.Random(1234)
    nonzero = dict.fromkeys(KEYS, 0)
    for trial in range(300):
        hyps, refs = random_corpus(rng)
        mine, ref = ours(hyps, refs), coco_reference(hyps, refs)
        assert_same(mine, ref, f"(trial {trial}: {hyps} / {refs})")
        for key in KEYS:
            nonzero[key] += ref[key] > 1e-3
    # the comparison must exercise real, non-degenerate scores
    assert all(count > 100 for count in nonzero.values()), nonzero


EDGE_CASES = {
    "empty prediction": ([[], "a dog runs".split()], [["a dog runs".split()], ["a dog is running".split()]]),
    "all predictions empty": ([[], []], [["a dog".split()], ["the man".split(), "a man".split()]]),
    "one reference each": (["a dog runs on grass".split(), "a man".split()],
                           [["a dog runs on the grass".split()], ["the woman".split()]]),
    "single image": (["a dog runs".split()], [["a dog runs".split(), "a dog is running".split()]]),
    "repeated words": (["dog dog dog dog dog dog".split(), "the the the".split()],
                       [["a dog and a dog".split(), "dog".split()], ["the man the dog".split()]]),
    "one-word prediction": (["dog".split(), "runs".split()], [["a dog".split()], ["dog runs".split(), "runs".split()]]),
    "exact match": (["a black dog runs".split(), "two girls".split()],
                    [["a black dog runs".split()], ["two girls".split(), "two young girls".split()]]),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_scorers_match_pycocoevalcap_on_edge_cases(name):
    hyps, refs = EDGE_CASES[name]
    assert_same(ours(hyps, refs), coco_reference(hyps, refs), name)


def test_known_values():
    # A perfect single-image match: BLEU ~1 (smoothing aside), ROUGE-L 1, CIDEr 0 (one image -> idf 0).
    s = ours(["a black dog runs".split()], [["a black dog runs".split()]])
    assert all(abs(s[f"bleu_{k}"] - 1) < 1e-6 for k in range(1, 5)) and s["rouge_l"] == 1.0 and s["cider"] == 0.0
    # Empty prediction next to a perfect one: its ROUGE-L is 0, so the mean is exactly 0.5.
    s = ours([[], "a dog".split()], [["a cat".split()], ["a dog".split()]])
    assert s["rouge_l"] == 0.5
    # BLEU-1 by hand: 2 of 3 unigrams match, candidate longer than the closest reference -> no penalty.
    s = ours(["a dog sat".split(), "x".split()], [["a dog".split()], ["y".split()]])
    assert abs(s["bleu_1"] - 2 / 4) < 1e-6


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),  # expected strings are what pycocoevalcap's Java PTBTokenizer produces
    [
        ("A black dog is running through the grass .", "a black dog is running through the grass"),
        ("Two girls take in the view.", "two girls take in the view"),
        ("A man's hat", "a man 's hat"),
        ("don't", "do n't"),
        ("I can't, won't, cannot do it!", "i ca n't wo n't can not do it"),
        ('The dogs\' toys are "red" and (blue).', "the dogs toys are red and -lrb- blue -rrb-"),
        ("A black-and-white dog jumps over a log; it's happy...", "a black-and-white dog jumps over a log it 's happy"),
        ("Mr. Smith and Dr. Who at 3.5 p.m. in the U.S.", "mr. smith and dr. who at 3.5 p.m. in the u.s."),
        ("1,000 people & 20% of them", "1,000 people & 20 % of them"),
        ("Smiling?! Yes!!", "smiling ?! yes !!"),
        ("“smart quotes” and it’s man’s — dash …", "smart quotes and it 's man 's dash"),
        ("gonna wanna gotta", "gon na wan na got ta"),
        ("rock'n'roll o'clock y'all I'd've", "rock 'n' roll o'clock y' all i 'd 've"),
        ("A hockey player (No. 10) skates", "a hockey player -lrb- no. 10 -rrb- skates"),
        ("a dog 's ball , he do n't know .", "a dog 's ball he do n't know"),
        ("", ""),
    ],
)
def test_ptb_tokenize_expected(raw, expected):
    assert cm.ptb_tokenize(raw) == expected


TYPICAL_CAPTIONS = [
    "A child in a pink dress is climbing up a set of stairs in an entry way .",
    "A black dog and a tri-colored dog playing with each other on the road .",
    "A man lays on a bench while his dog sits by him .",
    "Young girl with pigtails painting outside in the grass .",
    "The dog's owner throws a frisbee, and the dog catches it!",
    "Two girls take in the view.",
    "A man's bicycle leans against a wall; he's reading a book.",
    '"Welcome" is written on the sign above the door.',
    "A boy (in a red shirt) jumps off a diving board...",
    "A woman -- wearing sunglasses -- walks her dog.",
    "The dogs' leashes are tangled: one is red, one is blue.",
    "A dog doesn't want to take a bath.",
    "The children aren't looking at the camera.",
    "Two men can't decide which way to go?",
    "A toddler in a high-chair eats spaghetti.",
    "A rock-climber scales a 50-foot wall.",
    "A man in a t-shirt and jeans sits on a bench, reading.",
    "Three dogs run through the snow - one is black.",
    "A girl's face is painted like a tiger's.",
    "A biker does a trick on a BMX bike at the skate-park.",
    "An old man with a white beard, wearing a hat, plays the guitar.",
    "A football player in a red uniform (#22) runs with the ball.",
    "A white dog with brown spots is catching a Frisbee in mid-air.",
    "The baby's wearing a yellow hat; it's cute.",
    "a dog 's face",
    "A young child, who is wearing a blue shirt, smiles.",
    "What is the dog doing?",
    "It's a dog!",
    "A hockey player (No. 10) skates past the goalie.",
    "A woman wearing an \"I love NY\" t-shirt.",
    "A man jumps his bike over a ramp : the crowd cheers .",
    "A man with a 'mohawk' stands near a fence.",
    "A lady in a 1920's style dress.",
    "A boy who's wearing goggles swims.",
    "Two people kayaking on a lake;",
    "Mr. Smith walks his dog at 5:30 p.m. in the U.S.",
    "I'm sure they're gonna win, we've seen it.",
    "A man in a hat.A woman in a dress.",
    "A dog [with] a {ball} and 3.5 toys, $5 and 20%",
    "Kids play soccer at the park; it's a sunny day!",
]


@pytest.fixture(scope="module")
def java_tokenized():
    """TYPICAL_CAPTIONS through the real Java PTBTokenizer (one JVM start)."""
    if not HAS_JAVA:
        pytest.skip("java is not installed (needed by pycocoevalcap's PTBTokenizer)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(TYPICAL_CAPTIONS)})
    return [out[i][0] for i in range(len(TYPICAL_CAPTIONS))]


@needs_java
def test_ptb_tokenize_matches_java_ptbtokenizer(java_tokenized):
    diffs = [(c, j, cm.ptb_tokenize(c)) for c, j in zip(TYPICAL_CAPTIONS, java_tokenized) if cm.ptb_tokenize(c) != j]
    assert not diffs, "\n".join(f"{c!r}: java={j!r} python={p!r}" for c, j, p in diffs)


# ---------------------------------------------------------------------------------------------
# The evaluate module and the convenience API
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metric():
    import evaluate

    return evaluate.load(str(MODULE_DIR), keep_in_memory=True)


def test_evaluate_module_matches_pycocoevalcap(metric):
    rng = random.Random(99)
    for trial in range(20):
        hyps, refs = random_corpus(rng)
        result = metric.compute(predictions=[" ".join(h) for h in hyps], references=[[" ".join(r) for r in rs] for rs in refs],
                                meteor=False)
        assert_same(result, coco_reference(hyps, refs), f"(trial {trial})")
        assert result["meteor"] is None and "meteor" in result["unavailable"]


def test_evaluate_load_works_offline(tmp_path):
    # A fresh interpreter with every offline switch on and an empty HF cache: only the local files can serve.
    code = (
        "import evaluate, sys\n"
        "for path in sys.argv[1:]:\n"
        "    m = evaluate.load(path)\n"
        "    r = m.compute(predictions=['a dog runs .'], references=[['A dog runs.', 'a dog is running']], meteor=False)\n"
        "    assert r['rouge_l'] == 1.0 and r['meteor'] is None, r\n"
        "print('ok')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR), str(MODULE_FILE)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@needs_java
def test_compute_caption_metrics_end_to_end_matches_coco_eval(java_tokenized):
    """Raw captions -> our tokenizer + scorers == Java PTBTokenizer + pycocoevalcap scorers."""
    from minivlm.evaluation.metrics import compute_caption_metrics

    rng = random.Random(7)
    preds = TYPICAL_CAPTIONS[:20]
    refs = [rng.sample(TYPICAL_CAPTIONS, rng.randint(1, 5)) for _ in preds]
    by_text = dict(zip(TYPICAL_CAPTIONS, java_tokenized))
    expected = coco_reference([by_text[p].split() for p in preds], [[by_text[r].split() for r in rs] for rs in refs])
    result = compute_caption_metrics(preds, refs, meteor=False)
    assert_same(result, expected)
    assert set(result) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "unavailable"}


def test_input_validation(metric):
    from minivlm.evaluation.metrics import compute_caption_metrics

    with pytest.raises(ValueError, match=r"3 predictions.*2 reference"):
        compute_caption_metrics(["a", "b", "c"], [["a"], ["b"]], meteor=False)
    with pytest.raises(ValueError, match=r"\(3\).*\(2\)"):  # evaluate's own check names both counts
        metric.compute(predictions=["a", "b", "c"], references=[["a"], ["b"]], meteor=False)
    with pytest.raises(ValueError, match="image 1 has no reference"):
        compute_caption_metrics(["a", "b"], [["a"], []], meteor=False)
    with pytest.raises(ValueError, match="no predictions"):
        compute_caption_metrics([], [], meteor=False)
    # a bare string is accepted as a single reference; an empty prediction scores 0, no crash
    r = compute_caption_metrics(["", "a dog runs"], ["a cat sits", ["a dog runs", "a dog is running"]], meteor=False)
    assert r["rouge_l"] == 0.5 and r["bleu_1"] > 0


# ---------------------------------------------------------------------------------------------
# METEOR
# ---------------------------------------------------------------------------------------------
@needs_java
def test_meteor_matches_pycocoevalcap(metric, monkeypatch):
    from pycocoevalcap.meteor import meteor as meteor_module

    # Starting a METEOR JVM costs ~7 s, so the reference reuses the process the module starts:
    # the expected value is still pycocoevalcap's own Meteor.compute_score on our tokenised inputs.
    started = []

    class RecordingMeteor(meteor_module.Meteor):
        def __init__(self):
            super().__init__()
            started.append(self)

    monkeypatch.setattr(meteor_module, "Meteor", RecordingMeteor)
    rng = random.Random(5)
    hyps, refs = [], []
    while len(hyps) < 25:
        h, r = random_corpus(rng)
        hyps += h
        refs += r
    preds = [" ".join(h) for h in hyps] + ["a black dog runs through the grass"]
    references = [[" ".join(x) for x in rs] for rs in refs] + [["A black dog is running through the grass .", "A dog runs."]]
    result = metric.compute(predictions=preds, references=references, meteor=True)

    scorer = started[0] if started else meteor_module.Meteor()  # a JVM cached by an earlier call: start one
    gts = {i: [cm.ptb_tokenize(r) for r in rs] for i, rs in enumerate(references)}
    res = {i: [cm.ptb_tokenize(p)] for i, p in enumerate(preds)}
    expected, _ = scorer.compute_score(gts, res)
    assert result["meteor"] is not None and 0.05 < result["meteor"] < 1
    assert close(result["meteor"], expected), (result["meteor"], expected)
    assert result["unavailable"] == {}


@pytest.mark.parametrize("how", ["which", "path"])
def test_meteor_unavailable_without_java(metric, monkeypatch, how):
    if how == "which":
        monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    else:
        monkeypatch.setenv("PATH", "")
    r = metric.compute(predictions=["a dog runs"], references=[["a dog runs"]])
    assert r["meteor"] is None and "java" in r["unavailable"]["meteor"].lower()
    assert r["bleu_1"] > 0.99  # the pure-Python metrics are unaffected
    with pytest.raises(RuntimeError, match="java"):
        metric.compute(predictions=["a dog runs"], references=[["a dog runs"]], meteor=True)


def test_meteor_unavailable_without_pycocoevalcap(metric, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(shutil, "which", lambda *a, **k: "/usr/bin/java")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycocoevalcap" else real_find_spec(name, *a))
    r = metric.compute(predictions=["a dog runs"], references=[["a dog runs"]])
    assert r["meteor"] is None and "pycocoevalcap" in r["unavailable"]["meteor"]


def test_meteor_failure_is_reported_not_zero(monkeypatch, tmp_path):
    # a `java` that dies at once: METEOR must come back as None with the reason, never as 0
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    metric = cm.CaptionMetrics(keep_in_memory=True)  # a private module copy: no cached JVM to reuse
    r = metric.compute(predictions=["a dog runs"], references=[["a dog runs"]])
    assert r["meteor"] is None and r["unavailable"]["meteor"].startswith("METEOR failed")
    assert r["rouge_l"] == 1.0
    with pytest.raises(Exception):
        metric.compute(predictions=["a dog runs"], references=[["a dog runs"]], meteor=True)

