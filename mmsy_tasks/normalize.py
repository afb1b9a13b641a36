"""Answer normalisation shared by the dataset builders and answer extraction.

Two answers are the same option when their normalised forms are equal:
lower case, no punctuation, no articles, number words written as digits and
single spaces.
"""

import re
import unicodedata

ARTICLES = frozenset({"a", "an", "the"})

NUMBER_WORDS = {
    "zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
    "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18",
    "nineteen": "19", "twenty": "20",
}

_PUNCTUATION = re.compile(r"[^\w\s]")
_WHITESPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Return the canonical form of an answer string."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("_", " ")
    text = _PUNCTUATION.sub(" ", text)
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
    return _WHITESPACE.sub(" ", " ".join(words)).strip()


def is_yes_no(answer: str) -> bool:
    """Return whether an answer is ``yes`` or ``no`` after normalisation."""
    return normalize_answer(answer) in ("yes", "no")
