"""Embedded English->French corpus generated from a small, regular grammar.

English sentences have 3 to 9 words and follow three patterns::

    S  -> NP VERB NP            "the small black dog sees a red car"
        | NP VERB               "the babies sleep"          (intransitive verbs)
        | NP is/are [very] ADJ  "the cat is happy"
    NP -> DET [BAGS-ADJ] [ADJ] NOUN

Subjects of verbs are people or animals; objects and ``is``/``are`` subjects are any noun.
:func:`translate` renders French with these rules:

* Determiner, adjectives and verb agree with the noun in gender and number:
  "the red car" -> "la voiture rouge", "the red cars" -> "les voitures rouges",
  "the cats are happy" -> "les chats sont contents".
* Most adjectives follow the noun. The BAGS adjectives (beauty, age, goodness, size: petit,
  grand, jeune, vieux, beau, bon, nouveau, gros) precede it: "the old women" -> "les vieilles
  femmes", "the small black dog" -> "le petit chien noir".
* Verbs are in the 3rd person present: "the dog sees" -> "le chien voit", "the dogs see" ->
  "les chiens voient".
* Every French noun starts with a consonant, so there is never an elision (no "l'"); English
  uses "an" before a vowel ("an old dog" -> "un vieux chien").

Each English word has exactly one French rendering per grammatical context (no synonyms), text
is lowercase and unpunctuated, so a whitespace word tokenizer suffices on both sides. Validation
sentences are distinct and never occur in the training split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from trainer.data.builtin.split import Split


@dataclass(frozen=True)
class Noun:
    """A noun with its English and French singular/plural forms."""

    en: str
    en_plural: str
    fr: str
    fr_plural: str
    feminine: bool
    animate: bool


@dataclass(frozen=True)
class Adjective:
    """An adjective; ``forms`` is French (masc sg, fem sg, masc pl, fem pl)."""

    en: str
    forms: tuple[str, str, str, str]
    before: bool  # BAGS adjectives precede the noun in French

    def agree(self, *, feminine: bool, plural: bool) -> str:
        """Returns the French form agreeing with a noun's gender and number."""
        return self.forms[2 * plural + feminine]


@dataclass(frozen=True)
class Verb:
    """A verb with English base/3rd-singular and French 3rd singular/plural forms."""

    en: str
    en_3sg: str
    fr: str
    fr_plural: str
    transitive: bool


def _en_plural(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _fr_plural(word: str) -> str:
    if word.endswith(("s", "x", "z")):
        return word
    return word + "x" if word.endswith("eau") else word + "s"


def _fr_feminine(word: str) -> str:
    if word.endswith("e"):
        return word
    if word.endswith("eux"):
        return word[:-1] + "se"
    if word.endswith("er"):
        return word[:-2] + "ère"
    return word + "e"


def _en_3sg(verb: str) -> str:
    return verb + "es" if verb.endswith("o") else _en_plural(verb)


def _fields(item: str, count: int) -> list[str]:
    parts = item.split(":")
    return parts + [""] * (count - len(parts))


def _nouns(spec: str, *, animate: bool) -> list[Noun]:
    """Parses ``en:fr:gender[:en_plural[:fr_plural]]`` items (empty plural = regular)."""
    nouns = []
    for item in spec.split():
        en, fr, gender, en_pl, fr_pl = _fields(item, 5)
        nouns.append(
            Noun(en, en_pl or _en_plural(en), fr, fr_pl or _fr_plural(fr), gender == "f", animate)
        )
    return nouns


def _adjectives(spec: str, *, before: bool) -> list[Adjective]:
    """Parses ``en:masc[:fem[:masc_plural]]`` items (missing forms follow the regular rules)."""
    adjectives = []
    for item in spec.split():
        en, ms, fs, mp = _fields(item, 4)
        fs = fs or _fr_feminine(ms)
        adjectives.append(Adjective(en, (ms, fs, mp or _fr_plural(ms), fs + "s"), before))
    return adjectives


def _verbs(spec: str, *, transitive: bool) -> list[Verb]:
    """Parses ``en:fr_3sg[:fr_3pl[:en_3sg]]`` items (default plural: ``-e`` -> ``-ent``)."""
    verbs = []
    for item in spec.split():
        en, fr, fr_pl, en_3sg = _fields(item, 4)
        verbs.append(Verb(en, en_3sg or _en_3sg(en), fr, fr_pl or fr + "nt", transitive))
    return verbs


_PEOPLE = _nouns(
    "boy:garçon:m girl:fille:f woman:femme:f:women teacher:professeur:m doctor:médecin:m "
    "baker:boulanger:m farmer:fermier:m chef:chef:m king:roi:m queen:reine:f neighbor:voisin:m "
    "soldier:soldat:m painter:peintre:m singer:chanteur:m dancer:danseur:m brother:frère:m "
    "mother:mère:f father:père:m aunt:tante:f baby:bébé:m pilot:pilote:m thief:voleur:m:thieves "
    "waiter:serveur:m lady:dame:f",
    animate=True,
)
_ANIMALS = _nouns(
    "dog:chien:m cat:chat:m horse:cheval:m::chevaux cow:vache:f pig:cochon:m mouse:souris:f:mice "
    "rabbit:lapin:m duck:canard:m goat:chèvre:f fox:renard:m wolf:loup:m:wolves lion:lion:m "
    "tiger:tigre:m monkey:singe:m snake:serpent:m frog:grenouille:f hen:poule:f turtle:tortue:f "
    "camel:chameau:m giraffe:girafe:f zebra:zèbre:m whale:baleine:f shark:requin:m "
    "parrot:perroquet:m",
    animate=True,
)
_THINGS = _nouns(
    # objects
    "car:voiture:f house:maison:f book:livre:m table:table:f chair:chaise:f door:porte:f "
    "window:fenêtre:f bed:lit:m cup:tasse:f knife:couteau:m:knives fork:fourchette:f "
    "spoon:cuillère:f bottle:bouteille:f glass:verre:m box:boîte:f bag:sac:m key:clé:f "
    "phone:téléphone:m lamp:lampe:f pen:stylo:m letter:lettre:f newspaper:journal:m::journaux "
    "painting:tableau:m ball:balle:f toy:jouet:m bike:vélo:m boat:bateau:m train:train:m "
    "truck:camion:m hat:chapeau:m shirt:chemise:f dress:robe:f shoe:chaussure:f coat:manteau:m "
    "ring:bague:f map:carte:f gift:cadeau:m mirror:miroir:m umbrella:parapluie:m "
    "guitar:guitare:f piano:piano:m hammer:marteau:m "
    # food
    "apple:pomme:f banana:banane:f pear:poire:f cake:gâteau:m bread:pain:m cheese:fromage:m "
    "soup:soupe:f cookie:biscuit:m pizza:pizza:f carrot:carotte:f tomato:tomate:f:tomatoes "
    "lemon:citron:m cherry:cerise:f strawberry:fraise:f peach:pêche:f pie:tarte:f "
    # places and nature
    "garden:jardin:m street:rue:f river:rivière:f lake:lac:m mountain:montagne:f forest:forêt:f "
    "farm:ferme:f city:ville:f village:village:m bridge:pont:m castle:château:m shop:magasin:m "
    "market:marché:m park:parc:m beach:plage:f flower:fleur:f leaf:feuille:f:leaves wall:mur:m",
    animate=False,
)
NOUNS: dict[str, Noun] = {n.en: n for n in (*_PEOPLE, *_ANIMALS, *_THINGS)}

_BAGS = _adjectives(
    "small:petit big:grand young:jeune old:vieux:vieille:vieux beautiful:beau:belle "
    "good:bon:bonne new:nouveau:nouvelle fat:gros:grosse",
    before=True,
)
_AFTER = _adjectives(
    "red:rouge blue:bleu green:vert black:noir white:blanc:blanche yellow:jaune gray:gris "
    "brown:brun pink:rose purple:violet:violette happy:content sad:triste tired:fatigué "
    "hungry:affamé rich:riche poor:pauvre smart:intelligent stupid:stupide funny:drôle "
    "strange:étrange quiet:silencieux noisy:bruyant dirty:sale hot:chaud cold:froid wet:mouillé "
    "dry:sec:sèche heavy:lourd light:léger fast:rapide slow:lent strong:fort weak:faible "
    "soft:doux:douce hard:dur sweet:sucré empty:vide full:plein round:rond famous:célèbre "
    "kind:gentil:gentille polite:poli brave:courageux lazy:paresseux busy:occupé sick:malade "
    "calm:calme broken:cassé expensive:cher modern:moderne ancient:ancien:ancienne "
    "foreign:étranger dangerous:dangereux proud:fier shy:timide wild:sauvage huge:énorme "
    "tiny:minuscule dark:sombre fresh:frais:fraîche delicious:délicieux perfect:parfait "
    "friendly:amical:amicale:amicaux elegant:élégant angry:furieux ugly:laid",
    before=False,
)
ADJECTIVES: dict[str, Adjective] = {a.en: a for a in (*_BAGS, *_AFTER)}

_TRANSITIVE = _verbs(
    "see:voit:voient eat:mange like:aime watch:regarde buy:achète:achètent sell:vend:vendent "
    "find:trouve lose:perd:perdent take:prend:prennent carry:porte want:veut:veulent "
    "have:a:ont:has hold:tient:tiennent open:ouvre close:ferme wash:lave paint:peint:peignent "
    "draw:dessine read:lit:lisent write:écrit:écrivent hear:entend:entendent "
    "follow:suit:suivent push:pousse pull:tire throw:lance catch:attrape break:casse "
    "build:construit:construisent cook:cuisine love:adore hate:déteste "
    "know:connaît:connaissent visit:visite forget:oublie help:aide call:appelle:appellent "
    "meet:rencontre kiss:embrasse hide:cache show:montre bring:apporte send:envoie:envoient "
    "receive:reçoit:reçoivent choose:choisit:choisissent fill:remplit:remplissent touch:touche "
    "smell:sent:sentent bite:mord:mordent chase:chasse feed:nourrit:nourrissent "
    "protect:protège:protègent fix:répare steal:vole borrow:emprunte count:compte "
    "describe:décrit:décrivent prefer:préfère:préfèrent admire:admire "
    "drive:conduit:conduisent cut:coupe keep:garde",
    transitive=True,
)
_INTRANSITIVE = _verbs(
    "sleep:dort:dorment run:court:courent sing:chante dance:danse laugh:rit:rient cry:pleure "
    "swim:nage jump:saute wait:attend:attendent walk:marche fall:tombe smile:sourit:sourient",
    transitive=False,
)
VERBS: dict[str, Verb] = {v.en: v for v in (*_TRANSITIVE, *_INTRANSITIVE)}

# English determiner -> French (masculine singular, feminine singular, plural); None = invalid.
DETERMINERS: dict[str, tuple[str | None, str | None, str | None]] = {
    "the": ("le", "la", "les"),
    "a": ("un", "une", None),
    "an": ("un", "une", None),
    "this": ("ce", "cette", None),
    "these": (None, None, "ces"),
    "my": ("mon", "ma", "mes"),
    "your": ("votre", "votre", "vos"),
    "his": ("son", "sa", "ses"),
    "her": ("son", "sa", "ses"),
    "our": ("notre", "notre", "nos"),
    "their": ("leur", "leur", "leurs"),
}
_COPULA = {"is": "est", "are": "sont"}
_VERY = ("very", "très")

_NOUN_FORMS: dict[str, tuple[Noun, bool]] = {
    form: (noun, plural)
    for noun in NOUNS.values()
    for form, plural in ((noun.en, False), (noun.en_plural, True))
}
_VERB_FORMS: dict[str, tuple[Verb, bool]] = {
    form: (verb, third_singular)
    for verb in VERBS.values()
    for form, third_singular in ((verb.en, False), (verb.en_3sg, True))
}
# Sampling weights (cumulative): "the" dominates, yet every determiner stays frequent.
_SINGULAR_DETS = ("the", "a", "this", "my", "your", "his", "her", "our", "their")
_SINGULAR_CUM = (45, 65, 73, 78, 83, 88, 92, 96, 100)
_PLURAL_DETS = ("the", "these", "my", "your", "his", "her", "our", "their")
_PLURAL_CUM = (55, 65, 72, 79, 85, 90, 95, 100)
_ANIMATE = [n for n in NOUNS.values() if n.animate]
_ALL_NOUNS = list(NOUNS.values())
_ALL_ADJECTIVES = _BAGS + _AFTER


def english_words() -> set[str]:
    """Returns every English word form the grammar can produce."""
    words = set(DETERMINERS) | set(_COPULA) | {_VERY[0]}
    words |= set(_NOUN_FORMS) | set(_VERB_FORMS) | set(ADJECTIVES)
    return words


def _article(det: str, next_word: str) -> str:
    if det in ("a", "an"):
        return "an" if next_word[0] in "aeiou" else "a"
    return det


def _french_noun_phrase(
    det: str, adjectives: list[Adjective], noun: Noun, plural: bool
) -> str | None:
    """Renders a French noun phrase, or returns None if ``det`` cannot take that number."""
    article = DETERMINERS[det][2] if plural else DETERMINERS[det][noun.feminine]
    if article is None:
        return None
    f, p = noun.feminine, plural
    words = [article]
    words += [a.agree(feminine=f, plural=p) for a in adjectives if a.before]
    words.append(noun.fr_plural if plural else noun.fr)
    words += [a.agree(feminine=f, plural=p) for a in adjectives if not a.before]
    return " ".join(words)


def _parse_noun_phrase(tokens: list[str], pos: int) -> tuple[str, Noun, bool, int]:
    """Parses DET ADJ* NOUN at ``pos``; returns (french, noun, plural, next position)."""
    sentence = " ".join(tokens)
    if pos >= len(tokens) or tokens[pos] not in DETERMINERS:
        raise ValueError(f"expected a determiner at word {pos + 1}: {sentence!r}")
    det, pos = tokens[pos], pos + 1
    adjectives = []
    while pos < len(tokens) and tokens[pos] in ADJECTIVES:
        adjectives.append(ADJECTIVES[tokens[pos]])
        pos += 1
    if pos >= len(tokens) or tokens[pos] not in _NOUN_FORMS:
        raise ValueError(f"expected a noun at word {pos + 1}: {sentence!r}")
    noun, plural = _NOUN_FORMS[tokens[pos]]
    french = _french_noun_phrase(det, adjectives, noun, plural)
    if french is None or _article(det, tokens[pos - len(adjectives)]) != det:
        raise ValueError(f"{det!r} cannot go with {tokens[pos]!r}: {sentence!r}")
    return french, noun, plural, pos + 1


def translate(english: str) -> str:
    """Translates one sentence of the grammar into French.

    Args:
        english: A lowercase sentence such as ``"the small dogs see a red car"``.

    Returns:
        The French sentence, e.g. ``"les petits chiens voient une voiture rouge"``.

    Raises:
        ValueError: If the sentence is outside the grammar (unknown word, wrong agreement).
    """
    tokens = english.split()
    subject, noun, plural, pos = _parse_noun_phrase(tokens, 0)
    word = tokens[pos] if pos < len(tokens) else ""
    if word in _COPULA:
        if (word == "are") != plural:
            raise ValueError(f"{word!r} does not agree with the subject: {english!r}")
        rest = tokens[pos + 1 :]
        very = rest[:1] == [_VERY[0]]
        rest = rest[1:] if very else rest
        if len(rest) != 1 or rest[0] not in ADJECTIVES:
            raise ValueError(f"expected one adjective after {word!r}: {english!r}")
        adjective = ADJECTIVES[rest[0]].agree(feminine=noun.feminine, plural=plural)
        intensifier = [_VERY[1]] if very else []
        return " ".join([subject, _COPULA[word], *intensifier, adjective])
    if word not in _VERB_FORMS:
        raise ValueError(f"expected a verb at word {pos + 1}: {english!r}")
    verb, third_singular = _VERB_FORMS[word]
    if third_singular == plural:
        raise ValueError(f"{word!r} does not agree with the subject: {english!r}")
    words = [subject, verb.fr_plural if plural else verb.fr]
    if verb.transitive:
        obj, _, _, pos = _parse_noun_phrase(tokens, pos + 1)
        words.append(obj)
    else:
        pos += 1
    if pos != len(tokens):
        raise ValueError(f"unexpected words after the sentence: {english!r}")
    return " ".join(words)


def _noun_phrase(
    rng: random.Random, nouns: list[Noun], *, plural: bool
) -> tuple[list[str], list[str], Noun]:
    """Samples a noun phrase; returns (english words, french words, noun)."""
    adjectives = []
    if rng.random() < 0.2:
        adjectives.append(rng.choice(_BAGS))
    if rng.random() < 0.3:
        adjectives.append(rng.choice(_AFTER))
    noun = rng.choice(nouns)
    if plural:
        det = rng.choices(_PLURAL_DETS, cum_weights=_PLURAL_CUM)[0]
    else:
        det = rng.choices(_SINGULAR_DETS, cum_weights=_SINGULAR_CUM)[0]
    english = [a.en for a in adjectives]
    english.append(noun.en_plural if plural else noun.en)
    french = _french_noun_phrase(det, adjectives, noun, plural)
    assert french is not None  # the determiner lists above match the number
    return [_article(det, english[0]), *english], [french], noun


def _sentence(rng: random.Random) -> tuple[str, str]:
    """Samples one (english, french) sentence pair."""
    plural = rng.random() < 0.4
    kind = rng.random()
    if kind < 0.25:  # NP is/are [very] ADJ
        english, french, noun = _noun_phrase(rng, _ALL_NOUNS, plural=plural)
        english.append("are" if plural else "is")
        french.append(_COPULA[english[-1]])
        if rng.random() < 0.2:
            english.append(_VERY[0])
            french.append(_VERY[1])
        adjective = rng.choice(_ALL_ADJECTIVES)
        english.append(adjective.en)
        french.append(adjective.agree(feminine=noun.feminine, plural=plural))
        return " ".join(english), " ".join(french)
    english, french, _ = _noun_phrase(rng, _ANIMATE, plural=plural)
    verb = rng.choice(_INTRANSITIVE if kind < 0.4 else _TRANSITIVE)
    english.append(verb.en if plural else verb.en_3sg)
    french.append(verb.fr_plural if plural else verb.fr)
    if verb.transitive:
        obj_english, obj_french, _ = _noun_phrase(rng, _ALL_NOUNS, plural=rng.random() < 0.4)
        english += obj_english
        french += obj_french
    return " ".join(english), " ".join(french)


def translation_pairs(
    *, seed: int = 0, num_train: int = 20000, num_valid: int = 500
) -> Split[tuple[str, str]]:
    """Generates (english, french) sentence pairs from the grammar.

    Args:
        seed: Seed; the same seed gives the same corpus in every process.
        num_train: Number of training pairs (sentences may repeat).
        num_valid: Number of distinct validation pairs, none of which occurs in train.

    Returns:
        The train/valid split of ``(english, french)`` pairs.
    """
    valid_rng = random.Random(f"translation:{seed}:valid")
    train_rng = random.Random(f"translation:{seed}:train")
    held_out: dict[str, str] = {}  # insertion-ordered, so deterministic
    while len(held_out) < num_valid:
        english, french = _sentence(valid_rng)
        held_out.setdefault(english, french)
    train: list[tuple[str, str]] = []
    while len(train) < num_train:
        pair = _sentence(train_rng)
        if pair[0] not in held_out:
            train.append(pair)
    return Split(train=train, valid=list(held_out.items()))
