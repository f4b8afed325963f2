"""FactWorld: a seeded world of people, companies, cities and countries, and the facts that link them.

Knowledge here is a set of facts, each a (subject, relation, object) triple about named entities;
reasoning is following and combining them. The world is built so that every question has exactly
one answer and that answer can be derived from a few facts:

* relations are functions (a person has one birth city, one employer, at most one recorded parent
  and at most one spouse); `spouse` is symmetric, stated once and readable from either side;
* rules chain them: employer -> home city -> country, kinship composition (the parent of a parent
  is a grandparent), older-than (who was born first: a comparison of birth years);
* people and companies come in two disjoint pools: `seen` (their facts are in the training text)
  and `novel` (never in training; their names share no word with the seen pool's). Cities and
  countries are `shared`: both pools live in them and their facts are training text.

A counterfactual copy (`counterfactual_world`) permutes the objects of the attribute relations
(employer, birth city, birth year, home city, country) within each pool, so that a context built
from it contradicts what a model may have memorised.

Pure Python and deterministic: the same `WorldConfig` gives the same world, whatever the machine;
nothing depends on set order or `hash()`. Bump `GENERATOR_VERSION` whenever a seed's output changes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vslm.knowledge import names

GENERATOR_VERSION = 1
NOVEL_SHARE = 4  # one name in NOVEL_SHARE goes to the novel pool
YEARS = (1900, 1999)
PARENT_GAP = (20, 40)  # a parent is born this many years before the child
SPOUSE_GAP = 8  # spouses are born at most this many years apart

Kind = Literal["person", "company", "city", "country", "year"]
Pool = Literal["seen", "novel", "shared"]


@dataclass(frozen=True)
class Relation:
    """A relation's domain and range, and the noun that names it in questions ("the <noun> of X")."""

    domain: Kind
    target: Kind
    noun: str
    symmetric: bool = False
    swappable: bool = False  # counterfactual copies permute its objects


RELATIONS: dict[str, Relation] = {
    "parent": Relation("person", "person", "parent"),
    "spouse": Relation("person", "person", "spouse", symmetric=True),
    "employer": Relation("person", "company", "employer", swappable=True),
    "birth_city": Relation("person", "city", "birth city", swappable=True),
    "birth_year": Relation("person", "year", "birth year", swappable=True),
    "based_in": Relation("company", "city", "home city", swappable=True),
    "country": Relation("city", "country", "country", swappable=True),
}


MAX_HOPS = 6  # the longest chain a question may follow


class WorldConfig(BaseModel):
    """Everything `vslm facts generate` varies; the defaults make a world a 1-8M model can hold."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "16" is not 16: as in a run config
    seed: int = 0
    people: Annotated[int, Field(ge=4)] = 200
    novel_people: Annotated[int, Field(ge=4)] = 60
    countries: Annotated[int, Field(ge=2, le=len(names.COUNTRIES))] = 4
    cities_per_country: Annotated[int, Field(ge=1)] = 3
    people_per_company: Annotated[int, Field(ge=1)] = 10
    parent_fraction: Annotated[float, Field(ge=0, le=1)] = 0.7
    spouse_fraction: Annotated[float, Field(ge=0, le=1)] = 0.6
    hops: Annotated[int, Field(ge=1, le=MAX_HOPS)] = 3
    questions_per_hop: Annotated[int, Field(ge=1)] = Field(
        100, description="test questions per pool and hop count (five times as many training ones)")
    test_questions_per_hop: Annotated[int, Field(ge=0)] = Field(
        0, description="test questions per pool and hop count, 0 = questions_per_hop; the training ones stay "
                       "five times questions_per_hop")
    qa_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="seen people whose questions (with answers) are training text")
    renderings: Annotated[int, Field(ge=1)] = Field(4, description="times each entity's facts are written out")
    choices: Annotated[int, Field(ge=2)] = Field(8, description="answer candidates per question")
    preloaded: Annotated[int, Field(ge=0)] = Field(
        0, description="preloaded-context examples written to preloaded.txt and fixed.txt; 0 = none")
    preloaded_hops: Annotated[int, Field(ge=0, le=MAX_HOPS)] = Field(
        0, description="the most hops of a preloaded example, 0 = hops; fewer tests chains longer than trained")

    @model_validator(mode="after")
    def _fits_the_name_lists(self) -> WorldConfig:
        if self.countries * self.cities_per_country > len(names.CITIES):
            raise ValueError(f"countries x cities_per_country must be at most {len(names.CITIES)}")
        n_first, n_last = len(names.FIRST_NAMES), len(names.SURNAMES)
        novel = (n_first // NOVEL_SHARE) * (n_last // NOVEL_SHARE)
        seen = (n_first - n_first // NOVEL_SHARE) * (n_last - n_last // NOVEL_SHARE)
        if self.people > seen or self.novel_people > novel:
            raise ValueError(f"at most {seen} seen and {novel} novel people have distinct names")
        words = len(names.COMPANY_WORDS) // NOVEL_SHARE * len(names.COMPANY_KINDS)
        if max(self.people, self.novel_people) > words * self.people_per_company:
            raise ValueError("too few company names: raise people_per_company")
        return self


@dataclass(frozen=True)
class Entity:
    id: str
    name: str
    kind: Kind
    pool: Pool


@dataclass(frozen=True)
class Fact:
    """subject --relation--> object; object is an entity id, or the value itself for a year."""

    id: str
    subject: str
    relation: str
    object: str
    pool: Pool
    replaces: str | None = None  # counterfactual facts: the id of the fact they contradict

    def other(self, entity: str) -> str:
        """The far end of the fact seen from `entity` (either end of a symmetric relation)."""
        return self.subject if entity == self.object and RELATIONS[self.relation].symmetric else self.object

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["replaces"] is None:
            del d["replaces"]
        return d


@dataclass
class World:
    entities: dict[str, Entity]  # id -> entity, in creation order
    facts: list[Fact]
    _index: dict[tuple[str, str], Fact] = field(init=False, repr=False)
    _about: dict[str, list[Fact]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index, self._about = {}, {}
        for f in self.facts:
            self._index[(f.subject, f.relation)] = f
            self._about.setdefault(f.subject, []).append(f)
            if RELATIONS[f.relation].symmetric:
                self._index[(f.object, f.relation)] = f
                self._about.setdefault(f.object, []).append(f)

    def name(self, value: str) -> str:
        """An entity id's name, or a literal value (a year) as it is."""
        entity = self.entities.get(value)
        return entity.name if entity else value

    def lookup(self, subject: str, relation: str) -> Fact | None:
        return self._index.get((subject, relation))

    def follow(self, start: str, path: Sequence[str]) -> list[Fact] | None:
        """The facts met following `path` from `start`, or None where a link is missing."""
        facts, here = [], start
        for relation in path:
            fact = self.lookup(here, relation)
            if fact is None:
                return None
            facts.append(fact)
            here = fact.other(here)
        return facts

    def end(self, start: str, facts: Sequence[Fact]) -> str:
        """Where a chain of facts from `start` arrives (an entity id or a year)."""
        here = start
        for fact in facts:
            here = fact.other(here)
        return here

    def of_kind(self, kind: Kind, pool: Pool | None = None) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind and (pool is None or e.pool == pool)]

    def facts_about(self, entity: str) -> list[Fact]:
        """Facts that have the entity as subject, or as object of a symmetric relation."""
        return list(self._about.get(entity, []))


# ------------------------------------------------------------------------------------ building


def _split(words: Sequence[str], rng: random.Random) -> tuple[list[str], list[str]]:
    """(seen, novel) halves of a word list, shuffled: a quarter goes to the novel pool."""
    shuffled = list(words)
    rng.shuffle(shuffled)
    n_novel = len(shuffled) // NOVEL_SHARE
    return shuffled[n_novel:], shuffled[:n_novel]


class _Builder:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.entities: dict[str, Entity] = {}
        self.facts: list[Fact] = []
        self.counts: dict[str, int] = {}

    def entity(self, kind: Kind, name: str, pool: Pool) -> str:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        eid = f"{kind}-{n}"
        self.entities[eid] = Entity(eid, name, kind, pool)
        return eid

    def fact(self, subject: str, relation: str, obj: str) -> None:
        pool = self.entities[subject].pool
        self.facts.append(Fact(f"f{len(self.facts):05d}", subject, relation, obj, pool))

    def populate(self, cfg: WorldConfig, pool: Pool, n_people: int, first: list[str], last: list[str],
                 words: list[str], cities: list[str]) -> None:
        """One pool's companies and people, with their attributes and kinship."""
        rng = self.rng
        n_companies = max(2, math.ceil(n_people / cfg.people_per_company))
        company_names = [f"{w} {k}" for w in words for k in names.COMPANY_KINDS]
        companies = [self.entity("company", n, pool) for n in rng.sample(company_names, n_companies)]
        for c in companies:
            self.fact(c, "based_in", rng.choice(cities))

        pairs = rng.sample(range(len(first) * len(last)), n_people)
        people = [self.entity("person", f"{first[i // len(last)]} {last[i % len(last)]}", pool) for i in pairs]
        year = {p: rng.randint(*YEARS) for p in people}
        by_age = sorted(people, key=lambda p: (year[p], p))
        parent: dict[str, str] = {}
        for p in by_age:
            older = [q for q in by_age if PARENT_GAP[0] <= year[p] - year[q] <= PARENT_GAP[1]]
            if older and rng.random() < cfg.parent_fraction:
                parent[p] = rng.choice(older)
        spouse: dict[str, str] = {}
        for p in rng.sample(people, len(people)):
            if p in spouse or rng.random() >= cfg.spouse_fraction:
                continue
            free = [q for q in people if q != p and q not in spouse and abs(year[q] - year[p]) <= SPOUSE_GAP
                    and parent.get(q) != p and parent.get(p) != q]
            if free:
                q = rng.choice(free)
                spouse[p], spouse[q] = q, p
        for p in people:
            self.fact(p, "birth_year", str(year[p]))
            self.fact(p, "birth_city", rng.choice(cities))
            self.fact(p, "employer", rng.choice(companies))
            if p in parent:
                self.fact(p, "parent", parent[p])
            if p in spouse and p < spouse[p]:  # a marriage is one fact
                self.fact(p, "spouse", spouse[p])


@dataclass(frozen=True)
class NamePool:
    first: list[str]
    last: list[str]
    company_words: list[str]


def name_pools(seed: int) -> dict[str, NamePool]:
    """The seen and the novel pool's words for a world seed: a quarter of each list is novel."""
    rng = random.Random(seed)
    first, last, words = (_split(w, rng) for w in (names.FIRST_NAMES, names.SURNAMES, names.COMPANY_WORDS))
    return {pool: NamePool(first[i], last[i], words[i]) for i, pool in enumerate(("seen", "novel"))}


def _places(b: _Builder, n_countries: int, n_cities: int, rng: random.Random) -> list[str]:
    """Countries and cities (round robin over the countries); the cities' ids."""
    countries = [b.entity("country", n, "shared") for n in rng.sample(names.COUNTRIES, n_countries)]
    cities = [b.entity("city", n, "shared") for n in rng.sample(names.CITIES, n_cities)]
    for i, c in enumerate(cities):
        b.fact(c, "country", countries[i % len(countries)])
    return cities


def generate_world(cfg: WorldConfig) -> World:
    """The world for `cfg`: shared countries and cities, then the seen pool, then the novel pool."""
    pools = name_pools(cfg.seed)
    rng = random.Random(f"world:{cfg.seed}")
    b = _Builder(rng)
    cities = _places(b, cfg.countries, cfg.countries * cfg.cities_per_country, rng)
    for pool, n_people in (("seen", cfg.people), ("novel", cfg.novel_people)):
        p = pools[pool]
        b.populate(cfg, pool, n_people, p.first, p.last, p.company_words, cities)  # type: ignore[arg-type]
    return World(b.entities, b.facts)


def small_world(pool: NamePool, rng: random.Random, people: int = 8, countries: int = 2, cities: int = 4,
                people_per_company: int = 4) -> World:
    """A throwaway world drawn afresh from a name pool (everyone `seen`): the world of one
    preloaded-context example, whose names and values change from one example to the next."""
    b = _Builder(rng)
    city_ids = _places(b, countries, cities, rng)
    cfg = WorldConfig(people=max(4, people), novel_people=4, people_per_company=people_per_company)
    b.populate(cfg, "seen", people, pool.first, pool.last, pool.company_words, city_ids)
    return World(b.entities, b.facts)


def counterfactual_world(world: World, seed: int) -> World:
    """A copy whose attribute facts have their objects permuted within each (relation, pool): each
    changed fact gets the id `c<id>` and `replaces` its original; kinship is left as it is."""
    rng = random.Random(f"counterfactual:{seed}")
    changed: dict[str, Fact] = {}
    groups: dict[tuple[str, str], list[Fact]] = {}
    for f in world.facts:
        if RELATIONS[f.relation].swappable:
            groups.setdefault((f.relation, f.pool), []).append(f)
    for group in groups.values():
        order = rng.sample(group, len(group))
        for i, f in enumerate(order):  # each takes the next one's object: a cycle, so most values change
            new = order[(i + 1) % len(order)].object
            if new != f.object:
                changed[f.id] = Fact(f"c{f.id}", f.subject, f.relation, new, f.pool, replaces=f.id)
    return World(dict(world.entities), [changed.get(f.id, f) for f in world.facts])
