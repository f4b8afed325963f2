"""FactWorld as text: fact sentences, question wording, and the prompt layout every part shares.

Each relation has several sentence templates. The first is the fact's *card*, the one sentence that
stands for it in a context or a retrieval index; it names the relation with the words the questions
use ("The employer of X is Y." / "What is the employer of X?"; "X was born in the year Y." / "In what
year was X born?"), so a lexical retriever can match them. The others vary the wording in the
training text, which is what lets a model extract a fact from its weights when asked in a form it
never read (Allen-Zhu & Li 2023, Physics of Language Models 3.1).

Questions are composed from relation nouns: "Who is the parent of the spouse of X?"; a parent of a
parent is said "grandparent" (the kinship rule). The older-than rule reads "Who was born first, A or
B?".

The layout, in training text and at evaluation alike:

    <card>\\n<card>\\n...            (open book only: the context, one fact per line)
    Q: <question>\\nA: <answer>\\n

A reader trained to write its steps (RESEARCH.md 5b's "[answer] steps + answer") answers with the
cards of its supporting facts, each on a line of its own as in the context, in the order it uses them,
then the answer after a second "A:":

    Q: <question>\\nA: \\n<card>\\n<card>\\nA: <answer>\\n
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from vslm.knowledge.world import RELATIONS, Fact, World

# {s} subject, {o} object; the first template of each is the card.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "parent": ("The parent of {s} is {o}.", "{o} is the parent of {s}.", "{s} is a child of {o}.",
               "{s} was raised by {o}."),
    "spouse": ("{s} is the spouse of {o}.", "{s} is married to {o}.", "{s} and {o} are married.",
               "{s} wed {o} years ago."),
    "employer": ("The employer of {s} is {o}.", "{s} works for {o}.", "{s} is employed by {o}.",
                 "{s} has a job at {o}."),
    "birth_city": ("The birth city of {s} is {o}.", "{s} was born in {o}.", "{s} is a native of {o}.",
                   "{s} came into the world in {o}."),
    "birth_year": ("{s} was born in the year {o}.", "The birth year of {s} is {o}.", "In {o}, {s} was born.",
                   "{s} first saw daylight in {o}."),
    "based_in": ("The home city of {s} is {o}.", "{s} is based in {o}.", "{s} has its headquarters in {o}.",
                 "{s} keeps its offices in {o}."),
    "country": ("The country of {s} is {o}.", "{s} is a city in {o}.", "{s} lies in {o}.",
                "{s} sits just inside the borders of {o}."),
}
GRANDPARENT = "grandparent"
SYNONYMS = {GRANDPARENT: "parent parent"}  # for a lexical retriever: the kinship rule in words
OLDER = "Who was born first, {a} or {b}?"


def fact_text(world: World, fact: Fact, template: int = 0, subject: str | None = None) -> str:
    """The fact as a sentence; template 0 is its card. A symmetric fact may be told from its other
    end (`subject` = its object)."""
    s, o = fact.subject, fact.object
    if subject is not None and subject == o and RELATIONS[fact.relation].symmetric:
        s, o = o, s
    return TEMPLATES[fact.relation][template].format(s=world.name(s), o=world.name(o))


def card_text(world: World, fact: Fact) -> str:
    return fact_text(world, fact, 0)


def noun_phrase(name: str, path: Sequence[str]) -> str:
    """`name` followed along `path`: ("parent", "spouse") -> "the spouse of the parent of NAME";
    two parents in a row are one grandparent."""
    phrase, i = name, 0
    while i < len(path):
        if path[i] == "parent" and i + 1 < len(path) and path[i + 1] == "parent":
            phrase, i = f"the {GRANDPARENT} of {phrase}", i + 2
        else:
            phrase, i = f"the {RELATIONS[path[i]].noun} of {phrase}", i + 1
    return phrase


def chain_question(name: str, path: Sequence[str]) -> str:
    """"Who/What is the <last relation> of <noun phrase of the rest>?"; a birth year, always last,
    is asked "In what year was <noun phrase> born?" (the words of its card, and of older-than)."""
    if path[-1] == "birth_year":
        return f"In what year was {noun_phrase(name, path[:-1])} born?"
    wh = "Who" if RELATIONS[path[-1]].target == "person" else "What"
    return f"{wh} is {noun_phrase(name, path)}?"


def older_question(a: str, b: str) -> str:
    return OLDER.format(a=a, b=b)


def closed_book_prompt(question: str) -> str:
    return f"Q: {question}\nA:"


def open_book_prompt(cards: Sequence[str], question: str) -> str:
    return "".join(f"{c}\n" for c in cards) + closed_book_prompt(question)


STEPS_END = "\nA:"  # what ends a reader's steps (with_steps): its answer follows as after a prompt


def with_steps(steps: Sequence[str], answer: str) -> str:
    """The answer of a reader that writes its steps first: the cards it reads, each on a line of its own
    (a card's first word is then the token it is in the context), then STEPS_END and the answer
    (answer_text lays it out as any answer)."""
    return "".join(f"\n{s}" for s in steps) + STEPS_END + " " + answer


def answer_text(answer: str) -> str:
    """What follows a prompt: the answer and the newline that ends it (so "Ann" is not "Anna"'s prefix)."""
    return f" {answer}\n"


def entity_document(world: World, entity: str, rng: random.Random, rendering: int,
                    orders: dict[str, list[int]]) -> str:
    """One write-up of an entity's facts, one sentence per line in a random order; `rendering`
    picks each fact's template from its own shuffled order, so successive write-ups vary wording."""
    lines = []
    for fact in world.facts_about(entity):
        order = orders.setdefault(fact.id, rng.sample(range(len(TEMPLATES[fact.relation])),
                                                      len(TEMPLATES[fact.relation])))
        lines.append(fact_text(world, fact, order[rendering % len(order)], subject=entity))
    rng.shuffle(lines)
    return "\n".join(lines)
