"""Deterministic generator of the ingot_mc and ingot_gen items.

    python -m ingot.eval.lm_eval_tasks.make_items [--out-dir DIR]

rewrites ingot_mc.jsonl and ingot_gen.jsonl (beside this file by default) byte for byte. Every
kind draws from its own RNG seeded by its name, so editing one kind never reshuffles another.
All items are written for ingot; the tables are common words and public facts.

ingot_mc rows: {"id", "kind", "question", "choices", "gold"}. Choices start with a space and the
prompt ("Question: ...\\nAnswer:") ends without one, so each continuation is " 12", " Paris".
ingot_gen rows: {"id", "kind", "prompt", "answer"}; the answer is one number or one word.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

# Grouped by theme: an item's distractors come from other groups, so "opposite of above" is
# never offered "down" or "bottom", which would also be right. No word appears twice.
OPPOSITES = {
    "place": [("up", "down"), ("top", "bottom"), ("above", "below"), ("left", "right"),
              ("in", "out"), ("front", "back"), ("north", "south"), ("east", "west"),
              ("near", "far")],
    "time": [("early", "late"), ("first", "last"), ("begin", "end"), ("before", "after"),
             ("always", "never")],
    "nature": [("hot", "cold"), ("light", "dark"), ("black", "white"), ("day", "night"),
               ("summer", "winter"), ("morning", "evening"), ("wet", "dry")],
    "size": [("big", "small"), ("tall", "short"), ("thick", "thin"), ("wide", "narrow"),
             ("deep", "shallow"), ("minimum", "maximum")],
    "things": [("loud", "quiet"), ("sweet", "sour"), ("smooth", "rough"), ("sharp", "blunt"),
               ("fast", "slow"), ("clean", "dirty"), ("full", "empty"), ("cheap", "expensive")],
    "people": [("happy", "sad"), ("love", "hate"), ("laugh", "cry"), ("friend", "enemy"),
               ("war", "peace"), ("good", "bad"), ("positive", "negative"), ("strong", "weak"),
               ("safe", "dangerous"), ("rich", "poor"), ("young", "old"), ("boy", "girl"),
               ("king", "queen"), ("alive", "dead"), ("asleep", "awake")],
    "action": [("open", "closed"), ("win", "lose"), ("buy", "sell"), ("push", "pull"),
               ("come", "go"), ("give", "take"), ("remember", "forget"), ("pass", "fail"),
               ("lost", "found"), ("entrance", "exit")],
    "answer": [("yes", "no"), ("true", "false"), ("accept", "refuse"), ("question", "answer")],
}

# (country as it reads after "the capital of", capital); countries with a disputed, split or
# moving capital are left out.
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("the United Kingdom", "London"), ("Ireland", "Dublin"),
    ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Austria", "Vienna"),
    ("Switzerland", "Bern"), ("Poland", "Warsaw"), ("Hungary", "Budapest"), ("Greece", "Athens"),
    ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"), ("Iceland", "Reykjavik"), ("Russia", "Moscow"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Ghana", "Accra"), ("Morocco", "Rabat"), ("Algeria", "Algiers"), ("Tunisia", "Tunis"),
    ("Senegal", "Dakar"), ("Japan", "Tokyo"), ("China", "Beijing"), ("South Korea", "Seoul"),
    ("India", "New Delhi"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("the Philippines", "Manila"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Cuba", "Havana"),
    ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"),
]


def _rng(kind: str) -> random.Random:
    return random.Random(f"ingot-eval-{kind}")


def _mc(kind: str, i: int, question: str, answer: str, distractors: list[str],
        rng: random.Random) -> dict:
    """One mc row: the answer among three distractors at a random position, space-prefixed."""
    choices = [answer, *distractors]
    assert len(set(choices)) == 4, (kind, question, choices)
    rng.shuffle(choices)
    return {"id": f"{kind}-{i:03d}", "kind": kind, "question": question,
            "choices": [f" {c}" for c in choices], "gold": choices.index(answer)}


def _near_numbers(answer: int, rng: random.Random) -> list[str]:
    """Three wrong non-negative numbers close to answer (off by one, two or ten)."""
    pool = [answer + d for d in (-10, -2, -1, 1, 2, 10) if answer + d >= 0]
    return [str(n) for n in rng.sample(pool, 3)]


def _distinct_pairs(rng: random.Random, n: int, draw) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        pair = draw()
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def mc_add(n: int = 60) -> list[dict]:
    """add: "What is 7 plus 5?" with 1 <= a, b <= 20; distractors off by 1, 2 or 10."""
    rng = _rng("add")
    pairs = _distinct_pairs(rng, n, lambda: (rng.randint(1, 20), rng.randint(1, 20)))
    return [_mc("add", i, f"What is {a} plus {b}?", str(a + b), _near_numbers(a + b, rng), rng)
            for i, (a, b) in enumerate(pairs)]


def mc_sub(n: int = 38) -> list[dict]:
    """sub: "What is 15 minus 6?" with 2 <= a <= 20 and a positive result."""
    rng = _rng("sub")

    def draw() -> tuple[int, int]:
        a = rng.randint(2, 20)
        return a, rng.randint(1, a - 1)

    pairs = _distinct_pairs(rng, n, draw)
    return [_mc("sub", i, f"What is {a} minus {b}?", str(a - b), _near_numbers(a - b, rng), rng)
            for i, (a, b) in enumerate(pairs)]


def mc_extreme(kind: str, n: int = 25) -> list[dict]:
    """largest / smallest: four distinct numbers 1..99; the choices are those four, as listed."""
    rng = _rng(kind)
    pick = max if kind == "largest" else min
    rows = []
    for i in range(n):
        numbers = rng.sample(range(1, 100), 4)
        listed = ", ".join(str(x) for x in numbers[:3]) + f" or {numbers[3]}"
        rows.append({"id": f"{kind}-{i:03d}", "kind": kind,
                     "question": f"Which number is the {kind}: {listed}?",
                     "choices": [f" {x}" for x in numbers], "gold": numbers.index(pick(numbers))})
    return rows


def mc_opposites() -> list[dict]:
    """opposite: "What is the opposite of hot?"; distractors are answers from other themes."""
    rng = _rng("opposite")
    rows = []
    for theme, pairs in OPPOSITES.items():
        others = [b for t, ps in OPPOSITES.items() if t != theme for _, b in ps]
        for word, answer in pairs:
            rows.append(_mc("opposite", len(rows), f"What is the opposite of {word}?", answer,
                            rng.sample(others, 3), rng))
    return rows


def mc_capitals() -> list[dict]:
    """capital: "What is the capital of France?"; distractors are other capitals in the table."""
    rng = _rng("capital")
    capitals = [c for _, c in CAPITALS]
    return [_mc("capital", i, f"What is the capital of {country}?", capital,
                rng.sample([c for c in capitals if c != capital], 3), rng)
            for i, (country, capital) in enumerate(CAPITALS)]


def mc_calendar(kind: str, names: list[str]) -> list[dict]:
    """day / month: "What day comes after Monday?" and "... before ...", wrapping around."""
    rng = _rng(kind)
    rows = []
    for direction, step in (("after", 1), ("before", -1)):
        for i, name in enumerate(names):
            answer = names[(i + step) % len(names)]
            wrong = rng.sample([x for x in names if x != answer], 3)
            rows.append(_mc(kind, len(rows), f"What {kind} comes {direction} {name}?", answer,
                            wrong, rng))
    return rows


def _interleaved(name: str, rows: list[dict]) -> list[dict]:
    """rows in a seeded order, so `lm_eval --limit N` sees every kind, not only the first."""
    _rng(name).shuffle(rows)
    return rows


def mc_items() -> list[dict]:
    return _interleaved("mc", [
        *mc_add(), *mc_sub(), *mc_extreme("largest"), *mc_extreme("smallest"), *mc_opposites(),
        *mc_capitals(), *mc_calendar("day", DAYS), *mc_calendar("month", MONTHS)])


def _gen(kind: str, i: int, shown: list, answer) -> dict:
    """One gen row: the terms shown, each followed by a comma; the next term is the answer."""
    return {"id": f"{kind}-{i:03d}", "kind": kind,
            "prompt": "".join(f"{x}, " for x in shown).rstrip(), "answer": str(answer)}


def gen_count_up(n: int = 40) -> list[dict]:
    """count_up: "17, 18, 19, 20," -> "21", distinct starts 1..60."""
    starts = _rng("count_up").sample(range(1, 61), n)
    return [_gen("count_up", i, list(range(s, s + 4)), s + 4) for i, s in enumerate(starts)]


def gen_skip_count() -> list[dict]:
    """skip_count: "2, 4, 6, 8," -> "10"; steps 2, 3, 5, 10, starting at step * 1..10."""
    rows = []
    for step in (2, 3, 5, 10):
        for k in range(1, 11):
            terms = [step * (k + j) for j in range(4)]
            rows.append(_gen("skip_count", len(rows), terms, terms[-1] + step))
    return rows


def gen_count_down(n: int = 20) -> list[dict]:
    """count_down: "10, 9, 8, 7," -> "6", distinct starts 10..60."""
    starts = _rng("count_down").sample(range(10, 61), n)
    return [_gen("count_down", i, list(range(s, s - 4, -1)), s - 4) for i, s in enumerate(starts)]


def gen_cycle(kind: str, names: list[str]) -> list[dict]:
    """day / month: three consecutive names, wrapping -> the fourth ("Monday, Tuesday,
    Wednesday," -> "Thursday")."""
    size = len(names)
    return [_gen(kind, i, [names[(i + j) % size] for j in range(3)], names[(i + 3) % size])
            for i in range(size)]


def gen_letters() -> list[dict]:
    """letter: "A, B, C, D," -> "E", starting at A..U so the answer is at most Y."""
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    return [_gen("letter", i, letters[i:i + 4], letters[i + 4]) for i in range(21)]


def gen_sums(n: int = 60) -> list[dict]:
    """sum: "12 + 7 =" -> "19" with 1 <= a <= 20, 1 <= b <= 9, distinct pairs."""
    rng = _rng("sum")
    pairs = _distinct_pairs(rng, n, lambda: (rng.randint(1, 20), rng.randint(1, 9)))
    return [{"id": f"sum-{i:03d}", "kind": "sum", "prompt": f"{a} + {b} =", "answer": str(a + b)}
            for i, (a, b) in enumerate(pairs)]


def gen_items() -> list[dict]:
    return _interleaved("gen", [
        *gen_count_up(), *gen_skip_count(), *gen_count_down(), *gen_cycle("day", DAYS),
        *gen_cycle("month", MONTHS), *gen_letters(), *gen_sums()])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def write_items(out_dir: Path = HERE) -> list[Path]:
    """Write ingot_mc.jsonl and ingot_gen.jsonl into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "ingot_mc.jsonl", out_dir / "ingot_gen.jsonl"]
    write_jsonl(paths[0], mc_items())
    write_jsonl(paths[1], gen_items())
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    for path in write_items(parser.parse_args().out_dir):
        print(path)


if __name__ == "__main__":
    main()
