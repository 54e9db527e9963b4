"""Embedded search-query log for the character-level autocomplete task.

About 45 templates ("weather in {city}", "how to {task}", "{food} recipe", "best {product}
{year}", "{team} score", "translate {word} to {language}", ...) are expanded with their slot
fillers into every distinct query of 3 to 40 characters drawn from :data:`ALPHABET` (``a-z``,
``0-9`` and space). :func:`distinct_queries` returns them in a seeded, deterministic order, and
that order is the popularity ranking.

Real query logs are Zipf-distributed, so the log is too: the query at rank ``r`` (1-based) is
sampled with probability proportional to ``1 / r**1.1``. The top query alone is about a sixth
of the log, the 100th is ~160 times rarer, and most distinct queries occur a few times or
never. That is what makes a frequency prior worth learning, and the training split repeats
popular queries on purpose.

Every 20th rank (~5% of the distinct queries, spread over the whole frequency range) is held
out: the validation split samples those queries by the same Zipf law (restricted to them), the
training split samples only the others, so no validation query ever occurs in train.
"""

from __future__ import annotations

import functools
import itertools
import random
import re

from trainer.data.builtin.split import Split

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 "
"""Every character that can appear in a query."""

ZIPF_EXPONENT = 1.1
HOLD_OUT_EVERY = 20  # ranks 20, 40, 60, ... go to validation
MIN_CHARS, MAX_CHARS = 3, 40


def _items(text: str) -> list[str]:
    return text.split(",")


_SLOTS: dict[str, list[str]] = {
    "city": _items(
        "paris,london,tokyo,berlin,madrid,rome,new york,chicago,boston,seattle,miami,dallas,"
        "denver,austin,toronto,sydney,dubai,lisbon,dublin,vienna,prague,amsterdam,barcelona,"
        "istanbul,cairo,mumbai,seoul,bangkok,mexico city,san francisco"
    ),
    "task": _items(
        "tie a tie,boil an egg,lose weight,make pancakes,change a tire,reset a router,"
        "take a screenshot,bake bread,cook rice,write a resume,fix a leaky faucet,"
        "plant tomatoes,clean an oven,remove a stain,unclog a drain,draw a cat,play guitar,"
        "meditate,save money,start a blog,make coffee,fold a shirt,sleep better,"
        "jump start a car,install python,make slime,learn to code,get rid of ants"
    ),
    "food": _items(
        "pancake,lasagna,banana bread,chili,guacamole,pizza dough,chicken curry,beef stew,"
        "apple pie,brownie,hummus,meatball,fried rice,pad thai,tomato soup,carrot cake,omelette,"
        "risotto,tacos,falafel,cheesecake,ramen,granola,pesto,chocolate chip cookie"
    ),
    "product": _items(
        "laptop,phone,headphones,tv,camera,running shoes,backpack,smartwatch,tablet,mattress,"
        "vacuum,coffee maker,air fryer,monitor,keyboard,mouse,router,blender,electric bike,"
        "gaming chair"
    ),
    "year": [str(year) for year in range(2020, 2026)],
    "price": ["50", "100", "200", "500", "1000"],
    "team": _items(
        "lakers,warriors,celtics,yankees,dodgers,red sox,cowboys,patriots,packers,chiefs,"
        "real madrid,arsenal,chelsea,liverpool,juventus,bayern munich,psg,man united,man city,"
        "inter miami"
    ),
    "word": _items(
        "hello,thank you,good morning,goodbye,love,friend,cat,dog,water,house,happy,beautiful,"
        "cheese,apple,book,school,coffee,please,sorry,yes,tomorrow,night,sun,family,bread"
    ),
    "language": _items(
        "spanish,french,german,italian,japanese,chinese,korean,portuguese,russian,arabic"
    ),
    "topic": _items(
        "list comprehension,decorators,classes,dictionaries,async,regex,pandas,numpy,flask,django,"
        "unit testing,file io,lambda,generators,threading,sockets,virtualenv,type hints,"
        "dataclasses,sorting"
    ),
    "code": _items("reverse a string,read a file,sort a list,parse json,split a string"),
    "plang": _items("python,java,javascript,rust,go,c,kotlin,swift"),
    "concept": _items(
        "machine learning,inflation,a black hole,bitcoin,photosynthesis,dna,the stock market,"
        "a vpn,quantum computing,gdp,an api,cloud computing,a mortgage,blockchain,climate change"
    ),
    "term": _items(
        "serendipity,ubiquitous,ephemeral,pragmatic,nostalgia,empathy,irony,resilience,"
        "ambiguous,paradigm,meticulous,eloquent,candid,benevolent,whimsical"
    ),
    "place": _items(
        "pizza,pharmacy,gas station,coffee shop,gym,atm,pet store,hardware store,car wash,"
        "dentist,grocery store,bakery,urgent care,library,post office"
    ),
    "illness": _items(
        "flu,covid,migraine,strep throat,allergies,diabetes,anemia,sinus infection,"
        "food poisoning,back pain"
    ),
    "animals": _items(
        "cats,dogs,elephants,dolphins,sharks,owls,turtles,parrots,horses,bees,penguins,wolves,"
        "rabbits,hamsters,goldfish"
    ),
    "amount": ["1", "2", "5", "10", "25", "100"],
    "units": _items(
        "miles to km,km to miles,kg to lbs,lbs to kg,cups to ml,inches to cm,feet to meters,"
        "f to c,c to f,usd to eur,eur to usd,oz to grams"
    ),
    "holiday": _items(
        "christmas,easter,thanksgiving,halloween,new year,mothers day,fathers day,"
        "valentines day,memorial day,labor day"
    ),
    "genre": _items("horror,comedy,action,romance,sci fi,thriller,animated,documentary"),
    "news": _items("tech,sports,world,local,business,science,election,weather"),
}
_SLOTS["city2"] = _SLOTS["city"]

TEMPLATES: tuple[str, ...] = (
    "weather in {city}",
    "cheap flights to {city}",
    "flights from {city} to {city2}",
    "hotels in {city}",
    "things to do in {city}",
    "restaurants in {city}",
    "time in {city}",
    "{city} population",
    "how to {task}",
    "{food} recipe",
    "easy {food} recipe",
    "calories in {food}",
    "best {product} {year}",
    "best {product} under {price}",
    "cheap {product}",
    "{product} review",
    "{product} deals",
    "{team} score",
    "{team} schedule",
    "{team} tickets",
    "{team} highlights",
    "translate {word} to {language}",
    "{word} in {language}",
    "how to say {word} in {language}",
    "learn {language}",
    "{language} for beginners",
    "python {topic} tutorial",
    "python {topic} example",
    "how to {code} in {plang}",
    "what is {concept}",
    "define {term}",
    "{term} meaning",
    "{term} synonym",
    "{place} near me",
    "{place} open now",
    "symptoms of {illness}",
    "{illness} treatment",
    "{animals} facts",
    "how long do {animals} live",
    "{amount} {units}",
    "convert {amount} {units}",
    "when is {holiday} {year}",
    "{holiday} gift ideas",
    "best {genre} movies {year}",
    "{genre} movies on netflix",
    "{news} news today",
)

_SLOT_PATTERN = re.compile(r"\{(\w+)\}")
_VALID_QUERY = re.compile(f"[{ALPHABET}]{{{MIN_CHARS},{MAX_CHARS}}}")


def _expand(template: str) -> list[str]:
    """All fillings of one template, e.g. "weather in paris", "weather in london", ..."""
    names = _SLOT_PATTERN.findall(template)
    queries = []
    for values in itertools.product(*(_SLOTS[name] for name in names)):
        if len(set(values)) < len(values):  # "flights from paris to paris"
            continue
        queries.append(template.format(**dict(zip(names, values, strict=True))))
    return queries


@functools.cache
def _sorted_queries() -> tuple[str, ...]:
    queries = {q for template in TEMPLATES for q in _expand(template)}
    return tuple(sorted(q for q in queries if _VALID_QUERY.fullmatch(q)))


def distinct_queries(seed: int = 0) -> list[str]:
    """Returns every distinct query the templates make, ranked from most to least popular.

    Args:
        seed: Seed of the (deterministic) popularity ranking.

    Returns:
        The distinct queries; index ``i`` has Zipf rank ``i + 1``.
    """
    queries = list(_sorted_queries())
    random.Random(f"queries:{seed}:rank").shuffle(queries)
    return queries


def _zipf_sample(rng: random.Random, ranked: list[tuple[int, str]], k: int) -> list[str]:
    """Samples ``k`` queries with probability proportional to ``1 / rank**ZIPF_EXPONENT``."""
    weights = [1.0 / rank**ZIPF_EXPONENT for rank, _ in ranked]
    return rng.choices([query for _, query in ranked], weights=weights, k=k)


def search_queries(*, seed: int = 0, num_train: int = 30000, num_valid: int = 1000) -> Split[str]:
    """Generates a Zipf-distributed search-query log.

    Args:
        seed: Seed of the ranking and the sampling; the same seed gives the same log.
        num_train: Number of training queries (popular queries repeat).
        num_valid: Number of validation queries, sampled from the held-out distinct queries.

    Returns:
        The train/valid split of query strings.
    """
    ranked = list(enumerate(distinct_queries(seed), start=1))
    valid_ranks = [(r, q) for r, q in ranked if r % HOLD_OUT_EVERY == 0]
    train_ranks = [(r, q) for r, q in ranked if r % HOLD_OUT_EVERY != 0]
    train = _zipf_sample(random.Random(f"queries:{seed}:train"), train_ranks, num_train)
    valid = _zipf_sample(random.Random(f"queries:{seed}:valid"), valid_ranks, num_valid)
    return Split(train=train, valid=valid)
