"""Writes train.csv and dev.csv: short made-up product reviews rated negative / neutral / positive.

    python examples/data/reviews/make_reviews.py

The texts are built from the phrase lists below with a seeded generator (no outside source), so the
files are reproducible; they exist to show kprune on a CSV of one's own with its own column names.
"""
import csv
import random
from pathlib import Path

PRODUCTS = ["kettle", "backpack", "desk lamp", "phone case", "blender", "headset", "rain jacket", "keyboard",
            "coffee grinder", "water bottle", "office chair", "toaster", "tent", "monitor stand", "umbrella"]
OPINIONS = {
    "negative": ["stopped working after a week", "feels cheap and flimsy", "broke the second time I used it",
                 "is far too loud", "arrived scratched and the seller never answered",
                 "is a waste of money", "leaks every single time", "was a real disappointment",
                 "smells of plastic and wobbles", "let me down completely"],
    "neutral": ["does what it says, nothing more", "is fine for the price", "is okay but the colour is duller",
                "works, although setup took a while", "is average in every way",
                "is neither great nor bad", "arrived on time and seems ordinary", "is acceptable for now",
                "is about what I expected", "has some good and some bad points"],
    "positive": ["works perfectly and looks great", "is the best purchase I made this year",
                 "feels solid and well made", "exceeded my expectations", "is quiet, fast and easy to clean",
                 "was worth every penny", "still works like new after months", "is a delight to use",
                 "is sturdy and beautifully designed", "made my mornings better"],
}
OPENINGS = ["", "Honestly, ", "After a month, ", "Bought it as a gift: ", "In short, ", "Well, "]
CLOSING_FOR = {"negative": [" Returned it.", " Avoid.", ""], "neutral": [" Not sure about it.", ""],
               "positive": [" Would buy again.", " Five stars from me.", ""]}


def review(rng: random.Random, rating: str) -> str:
    text = f"{rng.choice(OPENINGS)}the {rng.choice(PRODUCTS)} {rng.choice(OPINIONS[rating])}."
    return text[0].upper() + text[1:] + rng.choice(CLOSING_FOR[rating])


def write(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "rating"])
        for i in range(rows):
            rating = rng.choice(list(OPINIONS))
            writer.writerow([i, review(rng, rating), rating])


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    write(here / "train.csv", 600, seed=1)
    write(here / "dev.csv", 150, seed=2)
