"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) as an offline ``evaluate`` module.

Load it from its local path, no Hub access needed::

    metric = evaluate.load("processing/metrics/caption_metrics")
    metric.compute(predictions=["a dog runs ."], references=[["A dog is running .", "A brown dog runs"]])

The numbers follow the official COCO caption evaluation (``pycocoevalcap``):

* BLEU-1..4: corpus BLEU with the "closest reference length" brevity penalty and the
  ``tiny=1e-15`` / ``small=1e-9`` smoothing of pycocoevalcap's ``bleu_scorer``.
* ROUGE-L: per-image LCS F-measure (beta=1.2, precision and recall maximised separately over
  the references), averaged over images.
* CIDEr-D: pycocoevalcap's ``Cider`` (n=4, sigma=6, clipped tf-idf cosine, Gaussian length
  penalty, x10), with document frequencies taken from the references of the evaluated set.
  With a single image every n-gram has idf 0, so CIDEr is 0 (as in pycocoevalcap).
* METEOR: pycocoevalcap's own Meteor 1.5 jar, only when ``java`` is on PATH and pycocoevalcap is
  importable; otherwise ``meteor`` is ``None`` and ``unavailable["meteor"]`` says why.
* SPICE is not offered: it needs Stanford CoreNLP models that are downloaded at first use.

BLEU, ROUGE-L, CIDEr-D and the tokenizer are pure Python (no Java, no pycocoevalcap).
This file must stay self-contained: ``evaluate.load`` copies only this file into its module cache.
"""

from __future__ import annotations

import atexit
import importlib.util
import math
import re
import shutil
import threading
from collections import Counter
from typing import Sequence

import datasets
import evaluate

# --------------------------------------------------------------------------------------------
# Tokenisation: a pure-Python approximation of pycocoevalcap's PTBTokenizer, which runs
# Stanford CoreNLP 3.4.1's PTBTokenizer (-preserveLines -lowerCase) and then drops the tokens
# below.  Note the list is compared with *lowercased* tokens, so "-LRB-"... never match: real
# COCO scores keep "-lrb-"/"-rrb-" etc. for brackets, and so do we.
# It agrees with the Java tokenizer on ordinary captions (tested); known gaps, all rare in captions:
# CoreNLP's longest-match lexer splits "1.5m" -> "1.5 m" and "No.5" -> "no. 5", mangles odd
# clitic stacks ("mann't"), and keeps "A." at the end of a caption only when the *next* caption
# starts in lower case (pycocoevalcap tokenises all captions as one text); we always split it.
# --------------------------------------------------------------------------------------------
PTB_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# CoreNLP normalises curly quotes to ASCII-style quotes, dashes to "--" and the ellipsis to "...".
_UNICODE = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
     "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2013": " -- ", "\u2014": " -- ",
     "\u2015": " -- ", "\u2026": " ... "}
)
# Words CoreNLP keeps a trailing period on (checked against CoreNLP 3.4.1's output).
_ABBREVIATIONS = frozenset(
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri "
    "ala ariz calif colo conn ct dak fla ga ind kan kans ky md mich minn mo mont neb nev okla penn "
    "tenn va vt wis wisc wyo inc co cos corp ltd pty ptys plc bancorp dept bhd assn univ intl sys "
    "invt elec natl mfg mtg jr sr bros blvd rd esq etc al seq est ext sq tel ph ft mr mrs ms dr drs "
    "prof profs sen sens rep reps atty attys lt col gen messrs gov govs adm rev maj sgt cpl pvt mt "
    "capt st ste ave pres lieut hon brig cmdr comdr pfc spc supt supts det vs alex wm jos cie cf "
    "treas m mme mlle ph.d ed.d a.k.a".split()
)
_ABBREVIATIONS_CAPITALISED = frozenset("Ark Del Ill La Mass Miss Ore Pa Tex Wash".split())
_SPECIAL = {  # CoreNLP splits these fused forms
    "cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"],
    "lemme": ["lem", "me"], "gimme": ["gim", "me"], "'tis": ["'t", "is"], "'twas": ["'t", "was"],
}
_TOKEN_RE = re.compile(
    r"""
      https?://\S+ | www\.\S+                          # URLs stay whole
    | </?[a-z!][^>]*>                                  # SGML-like tags
    | \.{2,} | --+ | [?!]+ | '' | ``                   # ellipses, dashes, "?!" runs, doubled quotes
    | '(?:[2-9]0s|till?|em|cause|tis|twas)\b           # words that begin with an apostrophe
    | (?:'(?:s|re|ve|m|d|ll)|n't)\b                    # already-detached clitics ("dog 's", "do n't")
    | [-+]\d+(?:[.,:]\d+)*(?![\w'-]|[.,:]\d)           # signed numbers: "-5", "-1,000"
    | \.\d+ | @\w+                                     # ".5", "@name"
    | \w+(?:(?:[-'.&/@]|(?<=\d)[,:](?=\d))\w+)*        # words, numbers, hyphen/dot/apostrophe compounds
    | \S                                               # any other symbol stands alone
    """,
    re.VERBOSE | re.IGNORECASE,
)
_CLITIC_RE = re.compile(r"(.*\w)('(?:s|re|ve|m|d|ll)|n't)$", re.IGNORECASE)
_ACRONYM_RE = re.compile(r"[a-z](?:\.[a-z])*", re.IGNORECASE)  # "b", "u.s", "p.m", "e.g"


def _split_word(word: str) -> list[str]:
    """Split clitics and CoreNLP's special fused forms off one lexed word."""
    if word.lower() in _SPECIAL:
        return list(_SPECIAL[word.lower()])
    if "'" not in word:
        return [word]
    tail: list[str] = []
    while (m := _CLITIC_RE.match(word)) is not None:  # "i'd've" -> i 'd 've, "don't" -> do n't
        word, clitic = m.groups()
        tail.insert(0, clitic)
    if m := re.fullmatch(r"(\w+)('n'?)(\w*)", word):  # "rock'n'roll", "more'n"
        head = [m.group(1), m.group(2)] + ([m.group(3)] if m.group(3) else [])
    elif word.lower().startswith("y'") and len(word) > 2:  # "y'all" -> y' all
        head = [word[:2], word[2:]]
    else:  # "5'6" -> 5 ' 6; "o'clock", "ma'am" stay whole
        head = [p for p in re.split(r"(?<=\d)(')(?=\d)", word) if p]
    return head + tail


def _keeps_period(word: str, after: str) -> bool:
    """Whether CoreNLP keeps the period after ``word``; ``after`` is the text that follows it."""
    if len(word) == 1 and word.isalpha():
        # CoreNLP splits "A." before a capitalised word -- and, since pycocoevalcap feeds all captions
        # as one text, before the next caption, which usually starts with a capital: split at the end too
        return re.match(r"\s*[^\sA-Z]", after) is not None
    if word.lower() in _ABBREVIATIONS or word in _ABBREVIATIONS_CAPITALISED or _ACRONYM_RE.fullmatch(word):
        return True
    # "No. 5", "Prop. 13": only before a number (at most one space away)
    return word.lower() in ("no", "nos", "prop") and re.match(r"\s?\d", after) is not None


def ptb_tokenize(text: str) -> str:
    """Tokenise one caption like pycocoevalcap's PTBTokenizer (pure-Python approximation).

    Args:
        text: a raw caption.

    Returns:
        The lowercased tokens joined by single spaces, with the PTB punctuation tokens removed
        (e.g. ``"A man's hat, (red)."`` -> ``"a man 's hat -lrb- red -rrb-"``).
    """
    text = text.translate(_UNICODE)
    merged: list[list] = []  # [token, end offset]
    for m in _TOKEN_RE.finditer(text):
        prev = merged[-1] if merged else None
        # re-attach the period of abbreviations/acronyms ("mr.", "u.s.") when written without a space
        # (a following "..." gives its first dot to the abbreviation: "etc...." -> "etc." "...")
        if m.group()[0] == "." and prev and prev[1] == m.start() and _keeps_period(prev[0], text[m.start() + 1:]):
            prev[0], prev[1] = prev[0] + ".", m.start() + 1
            if len(m.group()) > 1:
                merged.append([m.group()[1:], m.end()])
        else:
            merged.append([m.group(), m.end()])
    tokens: list[str] = []
    for tok, _ in merged:
        if tok.startswith(".."):
            tokens.append("...")
        elif tok.startswith("--"):
            tokens.append("--")
        elif tok == '"':
            tokens.append("''")
        elif tok in _BRACKETS:
            tokens.append(_BRACKETS[tok])
        else:
            tokens.extend(_split_word(tok))
    return " ".join(t for t in (t.lower() for t in tokens) if t not in PTB_PUNCTUATIONS)


# --------------------------------------------------------------------------------------------
# Scorers.  Inputs are token lists: hyps[i] is the candidate of image i, refs[i] its references.
# --------------------------------------------------------------------------------------------
def _ngram_counts(tokens: Sequence[str], n: int = 4) -> Counter:
    """Counts of all 1..n-grams (as tuples), in pycocoevalcap's insertion order."""
    return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def bleu_scores(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n exactly as pycocoevalcap's ``Bleu`` (option "closest").

    Args:
        hyps: the tokenised candidate of each image.
        refs: the tokenised references of each image (at least one per image).

    Returns:
        ``[BLEU-1, ..., BLEU-n]``.
    """
    tiny, small = 1e-15, 1e-9  # pycocoevalcap's smoothing: 0 matches over 0 guesses -> ~1e-6, not NaN
    testlen = reflen = 0
    guess, correct = [0] * n, [0] * n
    for hyp, image_refs in zip(hyps, refs):
        counts = _ngram_counts(hyp, n)
        max_ref: dict = {}
        for ref in image_refs:
            for ngram, c in _ngram_counts(ref, n).items():
                max_ref[ngram] = max(max_ref.get(ngram, 0), c)
        testlen += len(hyp)
        # closest reference length; ties go to the shorter reference
        reflen += min((abs(len(r) - len(hyp)), len(r)) for r in image_refs)[1]
        for k in range(n):
            guess[k] += max(0, len(hyp) - k)
        for ngram, c in counts.items():
            correct[len(ngram) - 1] += min(max_ref.get(ngram, 0), c)
    scores, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:  # brevity penalty on the whole corpus
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (one-row dynamic programme)."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]], beta: float = 1.2) -> float:
    """ROUGE-L as pycocoevalcap's ``Rouge``: mean over images of the LCS F-measure (same inputs as BLEU).

    An empty candidate scores 0 (pycocoevalcap also gives 0, except for the degenerate case of an
    empty candidate against an empty reference, which it scores 1).
    """
    scores = []
    for hyp, image_refs in zip(hyps, refs):
        if not hyp:
            scores.append(0.0)
            continue
        lcs = [_lcs(r, hyp) for r in image_refs]
        prec = max(l / len(hyp) for l in lcs)
        rec = max((l / len(r) if r else 0.0) for l, r in zip(lcs, image_refs))
        scores.append((1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0)
    return sum(scores) / len(scores)


def cider_d(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]], n: int = 4,
            sigma: float = 6.0) -> float:
    """CIDEr-D as pycocoevalcap's ``Cider``: mean over images, x10; document frequencies from ``refs``.

    Same inputs as ``bleu_scores``; needs at least two images for a non-zero score (idf = log(#images / df)).
    """
    ref_counts = [[_ngram_counts(r, n) for r in image_refs] for image_refs in refs]
    df: Counter = Counter()
    for image in ref_counts:  # an n-gram counts once per image, however many refs contain it
        df.update({g for counts in image for g in counts})
    log_num_images = math.log(float(len(refs)))

    def vectorise(counts: Counter):
        vec = [{} for _ in range(n)]
        norm = [0.0] * n
        for ngram, tf in counts.items():
            k = len(ngram) - 1
            vec[k][ngram] = tf * (log_num_images - math.log(max(1.0, df[ngram])))
            norm[k] += vec[k][ngram] ** 2
        return vec, [math.sqrt(x) for x in norm]

    scores = []
    for hyp, image_refs, image_ref_counts in zip(hyps, refs, ref_counts):
        vec_h, norm_h = vectorise(_ngram_counts(hyp, n))
        total = [0.0] * n
        for ref, counts in zip(image_refs, image_ref_counts):
            vec_r, norm_r = vectorise(counts)
            # Gaussian length penalty.  pycocoevalcap measures lengths in bigrams (len - 1); the
            # difference is the same in words whenever both captions are non-empty, and an empty
            # side has an all-zero vector, so word lengths give identical scores.
            penalty = math.e ** (-((len(hyp) - len(ref)) ** 2) / (2 * sigma**2))
            for k in range(n):
                # clipping: a candidate n-gram weight may not exceed the reference's
                val = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_h[k].items())
                if norm_h[k] != 0 and norm_r[k] != 0:
                    val /= norm_h[k] * norm_r[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(image_refs) * 10.0)
    return sum(scores) / len(scores)


# --------------------------------------------------------------------------------------------
# METEOR via pycocoevalcap's jar.  Starting the JVM and loading the paraphrase table takes
# several seconds, so one process is kept per Python process and reused across calls.
# --------------------------------------------------------------------------------------------
_METEOR_LOCK = threading.Lock()
_METEOR_SCORER = None


def meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot be computed here, or ``None`` when java and pycocoevalcap are present."""
    if shutil.which("java") is None:
        return "METEOR needs a Java runtime: `java` was not found on PATH"
    if importlib.util.find_spec("pycocoevalcap") is None:
        return "METEOR needs the pycocoevalcap package (it ships meteor-1.5.jar): pip install pycocoevalcap"
    return None


def _close_meteor() -> None:
    """Stop the cached METEOR process (also at exit) so that the next call starts a fresh one."""
    global _METEOR_SCORER
    scorer, _METEOR_SCORER = _METEOR_SCORER, None
    if scorer is None:
        return
    scorer.meteor_p.kill()
    try:
        scorer.meteor_p.stdin.close()
    except OSError:  # unflushed input to a dead process
        pass
    if scorer.lock.locked():  # Meteor.compute_score keeps its lock when it fails; its __del__ would hang
        scorer.lock.release()


atexit.register(_close_meteor)


def meteor_score(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR 1.5 with pycocoevalcap's ``Meteor`` (needs java; see ``meteor_unavailable_reason``).

    Args:
        hyps: the tokenised candidate of each image, as a string.
        refs: the tokenised references of each image, as strings.

    Returns:
        The corpus METEOR score; raises if the jar fails.
    """
    global _METEOR_SCORER
    from pycocoevalcap.meteor.meteor import Meteor  # test/optional dependency, imported lazily

    # "|||" is the jar's field separator and newlines end a request: strip both from every caption
    clean = lambda s: " ".join(s.replace("|||", " ").split())  # noqa: E731
    gts = {i: [clean(r) for r in image_refs] for i, image_refs in enumerate(refs)}
    res = {i: [clean(h)] for i, h in enumerate(hyps)}
    with _METEOR_LOCK:
        if _METEOR_SCORER is None or _METEOR_SCORER.meteor_p.poll() is not None:
            _METEOR_SCORER = Meteor()
        try:
            return float(_METEOR_SCORER.compute_score(gts, res)[0])
        except Exception:
            _close_meteor()  # a half-read reply would desynchronise the next call
            raise


# --------------------------------------------------------------------------------------------
_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): one generated caption per image.
    references (list[list[str]]): the reference captions of each image (at least one each).
    meteor (bool | None): None = compute METEOR when java + pycocoevalcap are available (None plus
        a reason when they are not or the jar fails), True = require it (raise otherwise), False = skip it.
    tokenize (bool): True (default) applies the PTB-style tokenizer to predictions and references;
        False splits already-tokenised captions on whitespace.
Returns:
    dict with bleu_1, bleu_2, bleu_3, bleu_4, meteor, rouge_l, cider (floats; meteor may be None)
    and unavailable: {metric name: reason} for every metric that was not computed.
"""
_CITATION = """\
@article{chen2015microsoft, title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh
  and Dollar, Piotr and Zitnick, C. Lawrence}, journal={arXiv:1504.00325}, year={2015}}
"""


class CaptionMetrics(evaluate.Metric):
    """``evaluate`` metric returning the COCO caption scores for a set of images."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, meteor: bool | None = None, tokenize: bool = True) -> dict:
        """Score all images at once (corpus level); see ``_KWARGS_DESCRIPTION`` for the arguments."""
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
        if not predictions:
            raise ValueError("no predictions to score")
        for i, image_refs in enumerate(references):
            if len(image_refs) == 0:
                raise ValueError(f"image {i} has no reference captions")
        norm = ptb_tokenize if tokenize else (lambda s: " ".join(s.split()))
        hyp_text = [norm(p) for p in predictions]
        ref_text = [[norm(r) for r in image_refs] for image_refs in references]
        hyps = [h.split() for h in hyp_text]
        refs = [[r.split() for r in image_refs] for image_refs in ref_text]

        b1, b2, b3, b4 = bleu_scores(hyps, refs, 4)
        result = {"bleu_1": b1, "bleu_2": b2, "bleu_3": b3, "bleu_4": b4, "meteor": None,
                  "rouge_l": rouge_l(hyps, refs), "cider": cider_d(hyps, refs), "unavailable": {}}
        reason = "disabled by the caller (meteor=False)" if meteor is False else meteor_unavailable_reason()
        if reason is None:
            try:
                result["meteor"] = meteor_score(hyp_text, ref_text)
            except Exception as exc:  # e.g. the JVM could not start; only fatal when METEOR was required
                if meteor:
                    raise
                reason = f"METEOR failed: {exc!r}"
        elif meteor:
            raise RuntimeError(reason)
        if reason is not None:
            result["unavailable"]["meteor"] = reason
        return result
