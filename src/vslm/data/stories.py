"""Seeded generator of simple children's stories: the lab's built-in default corpus.

Every story is assembled from hand-written sentence templates (opening, problem, attempts,
dialogue, resolution, ending) and small word lists, so the text is grammatical, varied and
pure ASCII, with a vocabulary of a few hundred words. The structure is chosen to give a tiny
language model more to learn than word frequencies:

* 1-3 named characters, drawn from ~60 names, recur throughout each story. A name cannot be
  guessed from the corpus statistics, only copied from earlier in the same story, so the
  model is rewarded for learning in-context copying (induction heads).
* An object with attributes ("the red kite") and the story's place and weather are introduced
  early and referred to again later, which is another long-range copy.
* Dialogue in double quotes and cause/effect sentences ("Because ..., ..." / "..., so ...").

Output is deterministic for a given ``random.Random`` state; nothing depends on set order or
``hash()``. Bump ``GENERATOR_VERSION`` whenever the output for a seed changes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from string import Formatter
from typing import NamedTuple

GENERATOR_VERSION: int = 1

# --- word lists -----------------------------------------------------------------------------
# Compact hand-aligned data; one item per line would triple the file.
# fmt: off

GIRL_NAMES = ("Mia", "Lily", "Emma", "Ava", "Zoe", "Ruby", "Lucy", "Anna", "Ella", "Nora",
              "Rosa", "Ivy", "Maya", "Lena", "Sara", "Kate", "Jade", "Amy", "Tess", "Hana",
              "Lola", "Nina", "Clara", "Grace", "Molly", "Daisy", "Alice", "Sophie", "Hazel", "Poppy")
BOY_NAMES = ("Tom", "Sam", "Ben", "Max", "Leo", "Jack", "Finn", "Noah", "Liam", "Owen",
             "Jake", "Luke", "Theo", "Omar", "Ravi", "Kai", "Eli", "Hugo", "Milo", "Oscar",
             "Felix", "Jonah", "Pete", "Dan", "Tim", "Ned", "Adam", "Ollie", "Ezra", "Arlo")
ALL_NAMES = GIRL_NAMES + BOY_NAMES
# Character adjectives follow "a", so none starts with a vowel sound.
CHAR_ADJS = ("kind", "brave", "shy", "curious", "happy", "merry", "clever", "funny", "gentle",
             "busy", "quiet", "silly", "friendly", "smart", "tiny", "sleepy", "cheerful",
             "careful", "bold", "playful")
CHAR_ANIMALS = ("bunny", "fox", "bear", "mouse", "duck", "cat", "puppy", "kitten", "frog",
                "hedgehog", "squirrel", "badger", "lamb", "pig", "goose", "raccoon")
COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "black",
          "brown", "gold", "silver")
FLOWER_COLORS = ("red", "yellow", "pink", "purple", "white", "blue", "orange")
OBJ_ADJS = ("big", "small", "shiny", "soft", "old", "new", "round", "striped", "spotted",
            "fluffy", "tiny", "bright")
OBJECTS = ("ball", "kite", "hat", "teddy bear", "boat", "drum", "book", "scarf", "toy car",
           "truck", "doll", "balloon", "box", "cup", "bell", "bike", "blanket", "ring", "key",
           "robot", "train", "bucket", "shell", "whistle", "bag", "cap", "lamp", "yo-yo")
BREAKABLE = ("kite", "boat", "drum", "toy car", "truck", "doll", "cup", "bell", "bike",
             "robot", "train", "bucket", "shell", "whistle", "lamp", "yo-yo")
PLACES = ("park", "garden", "forest", "beach", "farm", "river", "lake", "hill", "meadow",
          "market", "school", "town square", "pond", "field", "zoo", "library", "playground",
          "bakery", "woods", "orchard")
HOMES = ("a little house by the river", "a cozy cottage in the woods", "a tall house in the town",
         "a tree house on the hill", "a snug burrow under a big oak", "a blue house next to the farm",
         "a small flat above a bakery", "a white house with a red door", "an old mill near the pond")
# No weather words here: the weather is chosen separately and must not contradict this.
TIMES = ("morning", "afternoon", "evening", "day", "Saturday", "Sunday", "holiday")
FAMILY = ("mom", "dad", "grandma", "grandpa", "aunt", "uncle", "big sister", "big brother")
HOBBIES = ("draw pictures", "sing songs", "read books", "dance", "run fast", "dig in the garden",
           "build towers of blocks", "count the stars", "splash in puddles", "climb trees",
           "bake cookies", "collect shells", "paint", "jump rope", "play the drum", "tell stories")
GAMES = ("tag", "hide and seek", "catch", "leapfrog", "jump rope", "hopscotch", "chase")
ANIMALS = ("bird", "duck", "frog", "cat", "dog", "rabbit", "squirrel", "turtle", "fish", "bee",
           "butterfly", "goat", "cow", "pig", "horse", "sheep", "hen", "mouse", "deer", "snail",
           "ladybug", "crow", "puppy", "kitten", "hedgehog", "beetle")
CRITTERS = ("mouse", "cat", "hedgehog", "frog", "bird", "puppy", "kitten", "squirrel", "rabbit")
ANIMAL_DOING = ("eating a leaf", "sleeping in the sun", "jumping over a log", "looking for food",
                "singing on a branch", "running in circles", "drinking from a puddle",
                "chasing its tail", "sitting very still")
FOODS = ("an apple", "a sandwich", "some bread", "some cookies", "a pear", "some cheese",
         "a bowl of soup", "some berries", "a slice of cake", "a warm bun", "some grapes",
         "a carrot", "a plum", "some honey")
SPOTS = ("under the bed", "behind the door", "in the garden", "under a big rock",
         "in the tall grass", "near the pond", "inside a box", "on top of the shelf",
         "behind a tree", "in the sand", "under the table", "beside the fence",
         "inside an old boot", "under the bench", "in a pile of leaves", "behind the barn",
         "next to the well", "under a bush")
JUNK = ("an old sock", "a shiny stone", "a feather", "a lost button", "a little bug",
        "some dry leaves", "a pine cone", "a bent spoon", "a blue marble", "a snail")
STUCK_WHERE = ("in a tall tree", "on the roof", "on top of a high wall", "in a thorny bush",
               "on a high branch", "on top of the shed")
SOUNDS = ("bump", "crash", "squeak", "rustle", "thump", "scratch", "tap")
FEEL_BAD = ("sad", "worried", "upset", "scared", "cross", "tired", "lonely", "grumpy")
FEEL_GOOD = ("happy", "glad", "proud", "excited", "thankful", "joyful", "calm", "cheerful")
# (weather, things a character does because of it)
WEATHER = (
    ("raining", ("took {ahis} {wcolor} umbrella", "put on {ahis} {wcolor} boots")),
    ("cold", ("put on {ahis} warm {wcolor} coat", "wore {ahis} {wcolor} mittens")),
    ("sunny", ("wore {ahis} {wcolor} sun hat", "took a bottle of water")),
    ("windy", ("held on to {ahis} {wcolor} hat", "zipped up {ahis} {wcolor} jacket")),
)

# Slots that get a new random word every time a template uses them.
FRESH: dict[str, tuple[str, ...]] = {
    "spot": SPOTS, "feel_bad": FEEL_BAD, "feel_good": FEEL_GOOD, "animal": ANIMALS,
    "doing": ANIMAL_DOING, "food": FOODS, "junk": JUNK, "hobby": HOBBIES, "game": GAMES,
    "sound": SOUNDS, "flower": FLOWER_COLORS,
}

# --- templates ------------------------------------------------------------------------------
# Slots: {A} {B} {C} names of the characters; {ahe} {aHe} {ahis} {aHis} {ahim} their pronouns
# (same for b, c); {X}/{x...} whoever acts in this sentence, {Y} someone else; {obj} "red kite",
# {objn} "kite", {a_obj} "a red kite"; plus the per-story and FRESH slots above.

_Group = tuple[tuple[str, tuple[str, ...]], ...]
_FORMATTER = Formatter()


def _compile(*templates: str) -> _Group:
    """Pair each template with its FRESH slots, found once here instead of on every use."""
    out = []
    for template in templates:
        fresh: list[str] = []
        for _, field, _, _ in _FORMATTER.parse(template):
            if field in FRESH and field not in fresh:
                fresh.append(field)
        out.append((template, tuple(fresh)))
    return tuple(out)


INTRO = _compile(
    "Once upon a time, there was a {aadj} {akind} named {A}.",
    "There once was a {aadj} little {akind} called {A}.",
    "{A} was a {aadj} {akind} who lived in {home}.",
    "Long ago, in {home}, lived a {aadj} {akind} named {A}.",
    "This is a story about {A}, a {aadj} {akind}.")
INTRO_MORE = _compile(
    "{A} liked to {hobby} every day.",
    "{aHe} shared {ahis} home with {ahis} {family}.",
    "{A} had a big smile and a kind heart.",
    "Every morning, {A} said hello to the {animal} in the garden.",
    "{aHe} always had {food} in {ahis} bag.",
    "{A} was never bored, because {ahe} liked to {hobby}.")
OBJECT_INTRO = _compile(
    "{A} had {a_obj}. {aHe} loved the {obj} very much.",
    "{A} had a favorite toy. It was {a_obj}.",
    "For {ahis} birthday, {ahis} {family} gave {ahim} {a_obj}.",
    "{A} carried {ahis} {obj} everywhere {ahe} went.",
    "The {obj} was {A}'s best treasure, and {ahe} kept it close.")
FRIEND_INTRO = _compile(
    "{A} had a friend named {B}. {B} was a {badj} {bkind}.",
    "{A}'s best friend was {B}, a {badj} {bkind} who lived next door.",
    "{B} was {A}'s friend. {bHe} was {badj} and liked to {hobby}.")
THIRD_INTRO = _compile(
    "{C} lived near the {place}, and {A} and {B} often played with {chim}.",
    "There was also {C}, a {cadj} {ckind} who knew many things.",
    "{C}, a {cadj} {ckind}, was their friend too.")
WEATHER_LINE = _compile(
    "Because it was {weather}, {A} {wact}.",
    "It was {weather} outside, so {A} {wact}.",
    "{A} {wact} because it was {weather}.")
GO_SOLO = _compile(
    "One {time}, {A} went to the {place}.",
    "One {time}, {A} took the {obj} to the {place}.",
    "Early one {time}, {A} walked all the way to the {place}.")
GO_GROUP = _compile(
    "One {time}, {A} and {B} went to the {place} to play.",
    "One {time}, {A} took the {obj} and went to the {place} with {B}.",
    "\"Let's go to the {place}!\" said {B} one {time}. \"Yes!\" said {A}.")
INTERLUDE_SOLO = _compile(
    "At the {place}, {A} saw a {animal} {doing}.",
    "{A} ate {food} under a big tree.",
    "A {animal} said hello, and {A} waved back.",
    "{A} sang a little song about the {obj}.",
    "\"Look at the {animal}!\" said {A}.",
    "{A} picked some {flower} flowers and put them in {ahis} bag.",
    "{A} sat down to rest, because {ahe} was a little tired.")
INTERLUDE_GROUP = _compile(
    "{A} and {B} played {game} for a long time.",
    "{B} told a funny joke, and {A} laughed and laughed.",
    "\"I like the {place},\" said {B}. \"Me too,\" said {A}.",
    "{B} shared {food} with {A}.",
    "\"Can I hold the {obj}?\" asked {B}. \"Yes, but be careful,\" said {A}.",
    "{A} and {B} saw a {animal} {doing}.")
INTERLUDE_TRIO = _compile(
    "Then {C} came by and said, \"Can I play too?\" \"Of course!\" said {A}.",
    "{C} showed {A} and {B} how to play {game}.",
    "\"Hello, {C}!\" said {B}. {C} waved and smiled.")
FEEL = _compile(
    "{A} felt very {feel_bad}.",
    "{A} was so {feel_bad} that {ahe} wanted to cry.",
    "Tears came to {A}'s eyes.")
HELP_GROUP = _compile(
    "\"Do not worry, {A},\" said {B}. \"I will help you.\"",
    "\"I will help!\" said {B}.",
    "{B} patted {A} on the back. \"We can do this together,\" {bhe} said.")
HELP_SOLO = _compile(
    "{A} took a deep breath. \"I can do this,\" {ahe} said to {ahim}self.",
    "\"I will not give up,\" said {A}.")
FAIL_SOLO = _compile(
    "{A} felt {feel_bad}.", "{A} sat down and sighed.", "\"It is no use,\" said {A} sadly.",
    "\"Let's try again,\" said {X}.")
FAIL_GROUP = _compile(
    "\"Do not give up,\" said {Y}.", "\"We can do it,\" said {Y}.", "{A} felt {feel_bad}.",
    "\"What now?\" asked {X}.", "{X} and {Y} looked at each other.")
AFTER_SELF = _compile(
    "{A} was so {feel_good}!", "\"Hooray!\" shouted {A}.", "{A} hugged the {obj} and smiled.",
    "\"I will take better care of my {obj},\" said {A}.")
AFTER_HELPED = _compile(
    "\"Thank you, {X}!\" said {A}. \"You are a good friend.\"",
    "{A} gave {X} a big hug.",
    "\"You did it, {X}!\" said {A}.",
    "Because {X} helped {ahim}, {A} shared {food} with {xhim}.")
ENDING_SOLO = _compile(
    "That night, {A} went to bed with the {obj} right next to {ahim}.",
    "{A} went home, tired but {feel_good}.",
    "{A} was {feel_good}, so {ahe} sang all the way home.",
    "And {A} never forgot that {time}.",
    "{A} learned that it is good to be patient.")
ENDING_GROUP = _compile(
    "From that day on, {A} and {B} were best friends.",
    "{A} and {B} walked home together, {feel_good} and tired.",
    "{A} learned that it is good to ask friends for help.",
    "That night, {A} went to bed with the {obj} right next to {ahim}.",
    "And {A} never forgot that {time} with {B}.")
ENDING_TRIO = _compile(
    "{A}, {B} and {C} played together until the sun went down.",
    "From that day on, {A}, {B} and {C} did everything together.")


class _Problem(NamedTuple):
    setup: _Group
    ask: _Group
    attempt: _Group
    resolve: _Group


PROBLEMS = (
    _Problem(  # the object is lost
        _compile("When {A} looked around, the {obj} was gone.",
                 "{A} put the {obj} down, and when {ahe} came back, it was not there.",
                 "Suddenly, {A} could not find the {obj}.", "Oh no! The {obj} was lost."),
        _compile("\"Where is my {obj}?\" cried {A}.",
                 "\"I lost my {obj},\" said {A}. \"Can anyone help me find it?\"",
                 "\"Has anyone seen my {obj}?\" asked {A}."),
        _compile("{X} looked {spot}, but the {obj} was not there.",
                 "{X} searched {spot}. {xHe} found {junk}, but not the {obj}.",
                 "\"Maybe it is {spot},\" said {X}. But it was not.",
                 "{X} looked {spot} and all around, but there was no {objn}."),
        _compile("At last, {X} looked {spot}, and there was the {obj}!",
                 "Then {X} saw something {color} {spot}. It was the {obj}!",
                 "Finally, {X} found the {obj} {spot}.")),
    _Problem(  # the object is stuck up high
        _compile("A big wind blew the {obj} up, and it landed {stuck}.",
                 "{A} tossed the {obj} into the air, and it got stuck {stuck}.",
                 "Oh no! The {obj} was stuck {stuck}."),
        _compile("\"My {obj} is stuck!\" cried {A}. \"How can I get it down?\"",
                 "\"Please help me get my {obj} down,\" said {A}."),
        _compile("{X} jumped as high as {xhe} could, but {xhe} could not reach it.",
                 "{X} tried to climb up, but it was too high, so {xhe} slid back down.",
                 "{X} poked at it with a long stick, but the stick was too short.",
                 "{X} threw a pine cone at the {objn}, but it did not move.",
                 "{X} called to a bird for help, but the bird just sang and flew away."),
        _compile("Then {X} got a tall ladder, climbed up, and brought the {obj} down.",
                 "At last, a friendly squirrel ran up and pushed the {obj} down to {X}.",
                 "Then the wind blew again, and the {obj} fell right into {X}'s hands.")),
    _Problem(  # a scary noise that turns out to be a small animal
        _compile("Suddenly, {A} heard a loud {sound} from behind a bush.",
                 "Then there was a strange {sound} near the {place}.",
                 "All at once, {A} heard a {sound}, then another {sound}."),
        _compile("\"What was that?\" whispered {A}.",
                 "\"I am scared,\" said {A}. \"What made that noise?\""),
        _compile("{X} peeked {spot}, but saw nothing.",
                 "{X} held the {obj} tight and listened.",
                 "{X} called out, \"Hello? Who is there?\" But no one answered.",
                 "{X} took a small step closer, then a big step back."),
        _compile("Then a little {critter} came out. It was only a {critter}!",
                 "At last, {X} saw what it was. It was just a {critter} looking for food.",
                 "{X} pushed the leaves aside, and there sat a tiny {critter}.")),
    _Problem(  # the object breaks
        _compile("Oh no! The {obj} fell and broke.",
                 "{A} dropped the {obj}, and it broke into two pieces.",
                 "Then the {obj} hit a rock and broke."),
        _compile("\"Can anyone fix my {obj}?\" asked {A}.",
                 "\"My {obj} is broken,\" said {A}. \"What can I do?\""),
        _compile("{X} tried to fix it with tape, but the tape would not stick.",
                 "{X} tried some glue, but the pieces slipped apart.",
                 "{X} tied the pieces with string, but the string was too thin.",
                 "{X} pushed the pieces together, but they fell apart again."),
        _compile("Then {X} had a good idea. {xHe} used strong glue and held the pieces very "
                 "still, and the {obj} was fixed.",
                 "{X} took the {obj} to {xhis} grandpa, and grandpa fixed it with his little tools.",
                 "Slowly and carefully, {X} put the {obj} back together.")),
)
# fmt: on

_PRONOUNS = {True: ("she", "She", "her", "Her", "her"), False: ("he", "He", "his", "His", "him")}


def _name_slots(name: str, female: bool, prefix: str) -> dict[str, str]:
    he, cap_he, his, cap_his, him = _PRONOUNS[female]
    return {
        prefix.upper(): name,
        prefix + "he": he,
        prefix + "He": cap_he,
        prefix + "his": his,
        prefix + "His": cap_his,
        prefix + "him": him,
    }


# Per name, the ready-made slot dicts for each role, so filling a role is one dict.update.
_IS_FEMALE = {name: name in GIRL_NAMES for name in ALL_NAMES}
_NAME_SLOTS = {name: {p: _name_slots(name, _IS_FEMALE[name], p) for p in "abcx"} for name in ALL_NAMES}


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def generate_story(rng: random.Random) -> str:
    """One story, as a str without leading/trailing whitespace."""
    names = rng.sample(ALL_NAMES, rng.choice((1, 2, 2, 2, 3, 3)))
    animal_story = rng.random() < 0.4
    ctx: dict[str, str] = {}
    for prefix, name in zip("abc", names, strict=False):
        ctx.update(_NAME_SLOTS[name][prefix])
        if animal_story:
            ctx[prefix + "kind"] = rng.choice(CHAR_ANIMALS)
        else:
            ctx[prefix + "kind"] = "girl" if _IS_FEMALE[name] else "boy"
        ctx[prefix + "adj"] = rng.choice(CHAR_ADJS)
    color, noun = rng.choice(COLORS), rng.choice(OBJECTS)
    obj = f"{color} {noun}" if rng.random() < 0.7 else f"{rng.choice(OBJ_ADJS)} {color} {noun}"
    ctx.update(
        obj=obj,
        objn=noun,
        color=color,
        a_obj=_article(obj),
        home=rng.choice(HOMES),
        place=rng.choice(PLACES),
        time=rng.choice(TIMES),
        family=rng.choice(FAMILY),
        stuck=rng.choice(STUCK_WHERE),
        critter=rng.choice(CRITTERS),
        wcolor=rng.choice(COLORS),
    )
    weather, acts = rng.choice(WEATHER)
    ctx["weather"] = weather
    ctx["wact"] = rng.choice(acts).format_map(ctx)

    group = len(names) > 1

    used: set[str] = set()  # only tested for membership, never iterated

    def add(paragraph: list[str], templates: _Group) -> None:
        """Append a sentence from a template this story has not used yet, if any is left."""
        unused = [t for t in templates if t[0] not in used]
        template, fresh = rng.choice(unused or templates)
        used.add(template)
        for field in fresh:
            ctx[field] = rng.choice(FRESH[field])
        paragraph.append(template.format_map(ctx))

    def set_actor(name: str) -> None:
        ctx.update(_NAME_SLOTS[name]["x"])
        others = [n for n in names if n != name]  # list, not set: keeps order deterministic
        ctx["Y"] = rng.choice(others) if others else name

    # Opening: who, what they own (introduced here so it can be copied later), friends.
    opening: list[str] = []
    add(opening, INTRO)
    for _ in range(rng.randint(0, 2)):
        add(opening, INTRO_MORE)
    add(opening, OBJECT_INTRO)
    if group:
        add(opening, FRIEND_INTRO)
    if len(names) > 2:
        add(opening, THIRD_INTRO)
    setting: list[str] = []
    if rng.random() < 0.5:
        add(setting, WEATHER_LINE)
    add(setting, GO_GROUP if group else GO_SOLO)
    for _ in range(rng.randint(0, 4)):
        if len(names) > 2 and rng.random() < 0.3:
            add(setting, INTERLUDE_TRIO)
        else:
            add(setting, INTERLUDE_GROUP if group and rng.random() < 0.6 else INTERLUDE_SOLO)
    paragraphs = [opening, setting]

    # One or (sometimes) two episodes: problem, tries that fail, resolution.
    # The last problem (breaking) needs a breakable object: a scarf cannot break.
    problems = PROBLEMS if noun in BREAKABLE else PROBLEMS[:-1]
    for problem in rng.sample(problems, 2 if rng.random() < 0.2 else 1):
        trouble: list[str] = []
        add(trouble, problem.setup)
        if rng.random() < 0.6:
            add(trouble, FEEL)
        add(trouble, problem.ask)
        add(trouble, HELP_GROUP if group else HELP_SOLO)
        tries: list[str] = []
        for _ in range(rng.randint(1, 4)):
            set_actor(rng.choice(names))
            add(tries, problem.attempt)
            if rng.random() < 0.5:
                add(tries, FAIL_GROUP if group else FAIL_SOLO)
        helper = rng.choice(names)
        set_actor(helper)
        resolution: list[str] = []
        add(resolution, problem.resolve)
        add(resolution, AFTER_HELPED if helper != names[0] else AFTER_SELF)
        if rng.random() < 0.5:
            add(resolution, AFTER_SELF)
        paragraphs += [trouble, tries, resolution]

    ending: list[str] = []
    if len(names) > 2 and rng.random() < 0.4:
        add(ending, ENDING_TRIO)
    else:
        add(ending, ENDING_GROUP if group else ENDING_SOLO)
    if rng.random() < 0.3:
        ending.append("The end.")
    paragraphs.append(ending)
    return "\n".join(" ".join(p) for p in paragraphs)


def iter_stories(seed: int, n_bytes: int | None = None, n_stories: int | None = None) -> Iterator[str]:
    """Yield stories from random.Random(seed) until the total UTF-8 size of the yielded stories reaches
    n_bytes (the story that crosses the limit is still yielded) or n_stories have been yielded.
    Exactly one of n_bytes / n_stories must be given, else ValueError. Deterministic for a seed."""
    # Validate here, not inside the generator, so bad arguments fail at the call site.
    if (n_bytes is None) == (n_stories is None):
        raise ValueError("give exactly one of n_bytes or n_stories")
    limit = n_bytes if n_bytes is not None else n_stories
    assert limit is not None
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return _generate(seed, limit, count_bytes=n_bytes is not None)


def _generate(seed: int, limit: int, count_bytes: bool) -> Iterator[str]:
    rng = random.Random(seed)
    total = 0  # bytes or stories so far, whichever limit applies
    while total < limit:
        story = generate_story(rng)
        total += len(story.encode("utf-8")) if count_bytes else 1
        yield story


def stories_text(seed: int, n_bytes: int, separator: str = "\n\n") -> str:
    """Convenience: the stories joined by separator."""
    return separator.join(iter_stories(seed, n_bytes=n_bytes))
