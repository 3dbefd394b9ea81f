"""VQA accuracy with the standard (VQAv2) answer normalisation.

`normalize_answer` is the official evaluation's processing: lower case, punctuation removed (a
full stop kept inside numbers, commas between digits dropped), number words to digits, articles
dropped, common contractions restored ("dont" -> "don't"). `vqa_accuracy` scores one prediction
against the human answers: min(#humans who gave it / 3, 1), averaged over the ten leave-one-out
subsets when there are ten answers (as the official script does), and exact match of the
normalised strings when there is one reference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["normalize_answer", "vqa_accuracy", "vqa_score"]

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id": "I'd", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "its": "it's",
    "lets": "let's", "mightve": "might've", "mustve": "must've", "mustnt": "mustn't", "shouldve": "should've",
    "shouldnt": "shouldn't", "thats": "that's", "thered": "there'd", "theres": "there's", "theyd": "they'd",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "weve": "we've",
    "werent": "weren't", "whats": "what's", "whered": "where'd", "wheres": "where's", "whod": "who'd",
    "wholl": "who'll", "whos": "who's", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_DIGITS, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def normalize_answer(answer: str) -> str:
    """An answer as the VQAv2 evaluation compares it (see the module docstring)."""
    text = " ".join(answer.replace("\n", " ").replace("\t", " ").strip().split())
    text = _punctuation(text)
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str] | str) -> float:
    """One prediction's VQA accuracy against its reference answer(s), in [0, 1]."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    if not answers:
        raise ValueError("no reference answers to score against")
    prediction = normalize_answer(prediction)
    normalised = [normalize_answer(a) for a in answers]
    if len(normalised) == 1:
        return float(prediction == normalised[0])
    # Official metric: for each human, the others who agree with the prediction, min(n / 3, 1); averaged.
    scores = []
    for left_out in range(len(normalised)):
        matches = sum(a == prediction for i, a in enumerate(normalised) if i != left_out)
        scores.append(min(matches / 3, 1.0))
    return sum(scores) / len(scores)


def vqa_score(predictions: Sequence[str], answers: Sequence[Sequence[str] | str]) -> float:
    """Mean `vqa_accuracy` over a set of predictions (0 for an empty set)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    return sum(vqa_accuracy(p, a) for p, a in zip(predictions, answers)) / len(predictions) if predictions else 0.0
