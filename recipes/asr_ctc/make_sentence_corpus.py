"""Synthesises the English sentence corpus in ``recipes/asr_ctc/sentences/`` with espeak-ng.

    apt-get install espeak-ng && python recipes/asr_ctc/make_sentence_corpus.py

Sentences of 4-15 words from a small English grammar written below: templates whose slots
(subjects, verbs, objects, adjectives, places, cities, times, numbers) draw from word lists
of 1,180 distinct words, with verbs that agree with their objects (people eat food and
drive vehicles), places with their own prepositions (in the kitchen, at the station, on the
island) and articles that follow the next word (a / an), so a word language model has
structure to learn. Every sentence occurs once in the whole corpus, so test sentences are
unseen in training, and a few words of each open word list never occur in training, so
valid and test have out-of-vocabulary words. Three espeak-ng English voices (en-029,
en-us-nyc, en) with eight variants speak at random speed and pitch: 24 speakers, whose
variants ``make_speech_corpus.py`` does not use (``en`` has the rules of its en-gb); 16 kHz mono Ogg Opus plus SpeechBrain-style JSON manifests
(train 2,800 / valid 300 / test 300). The corpus is committed, so training needs neither
espeak-ng nor a network; this script documents how it was made and makes it again.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
import torchaudio.functional as AF

VOICES = ["en-029", "en-us-nyc", "en"]
VARIANTS = ["m2", "m4", "m5", "m6", "m8", "f1", "f3", "f5"]
SPLITS = {"train": 2800, "valid": 300, "test": 300}
SAMPLE_RATE = 16000
MIN_WORDS, MAX_WORDS = 4, 15
HELD_OUT_SHARE = 0.1  # of each open word list: words that only valid and test use
# libsndfile's Opus setting: 0.95 is about 20 kbit/s, enough for the log-mel features the recipes use.
OPUS_COMPRESSION = 0.95
OUT = Path(__file__).resolve().parent / "sentences"

# ------------------------------------------------------------------------------ word lists
NAMES = """james mary john patricia robert jennifer michael linda william elizabeth david barbara
richard susan joseph jessica thomas sarah charles karen daniel nancy matthew lisa anthony betty mark
sandra donald ashley steven kimberly paul emily andrew donna joshua michelle kenneth carol kevin amanda
brian melissa george deborah timothy stephanie ronald rebecca jason sharon edward laura jeffrey cynthia
ryan amy jacob angela gary helen nicholas anna eric brenda jonathan pamela stephen emma larry nicole
justin samantha scott katherine frank christine benjamin rachel gregory carolyn samuel janet raymond
maria patrick olivia alexander heather jack diane dennis julie jerry joyce tyler victoria aaron kelly
henry lauren peter grace harold rose arthur alice oliver sophie lucy hannah""".split()
PEOPLE = """teacher doctor farmer nurse driver baker painter writer singer dancer pilot soldier sailor
student lawyer banker cook waiter manager engineer scientist artist musician gardener builder carpenter
plumber fisherman policeman actor actress barber butcher chef clerk dentist editor guard hunter judge
king queen prince princess poet priest professor reporter shepherd tailor tourist traveller visitor
neighbour stranger child boy girl man woman baby mother father brother sister uncle aunt cousin
grandmother grandfather friend captain mayor librarian""".split()
ANIMALS = """dog cat horse cow sheep pig goat duck goose rabbit mouse rat fox wolf bear lion tiger
elephant monkey zebra giraffe camel donkey deer frog snake turtle owl eagle parrot pigeon swan crow bee
butterfly spider whale dolphin shark penguin kangaroo squirrel hamster puppy kitten pony bull hen lamb
""".split()
FOODS = """apple banana orange lemon pear peach plum cherry grape melon tomato potato carrot onion
cabbage pumpkin cucumber egg sandwich cake pie biscuit cookie muffin pancake sausage burger pizza bun
loaf mushroom strawberry pineapple coconut doughnut pastry omelette""".split()
MASS_FOODS = """bread butter cheese soup rice milk tea coffee juice honey jam salad chocolate pasta fish
meat sugar salt flour cereal yogurt lemonade porridge""".split()
THINGS = """book pen pencil box bag basket bottle cup glass plate bowl spoon fork knife table chair
bed lamp clock door window key coin ticket picture photo camera phone radio computer television ball
kite toy doll puzzle candle mirror umbrella wallet purse suitcase blanket pillow towel bucket ladder
hammer rope brush broom shovel sofa desk shelf cupboard carpet curtain envelope parcel poster painting
statue flag tent helmet kettle pan pot jar vase balloon necklace ring watch present""".split()
CLOTHES = """hat coat shirt jacket dress scarf glove shoe boot sock belt sweater skirt uniform sandal
""".split()
VEHICLES = """car bus truck train boat ship van tractor bicycle motorbike scooter taxi plane helicopter
""".split()
READING = """book letter newspaper magazine notebook diary map poem story recipe note report message
postcard novel""".split()
INSTRUMENTS = "guitar piano violin drum trumpet flute harp cello".split()
# Places by the preposition they take, so "at the kitchen" never occurs.
PLACES_IN = """kitchen garden park forest village office museum library church hospital shop bakery
restaurant cafe hotel theatre cinema classroom bedroom bathroom hall cellar attic yard factory valley
cave desert tower square studio laboratory temple barn field""".split()
PLACES_AT = """station market school bank airport harbour stadium zoo castle palace pharmacy supermarket
gym garage playground""".split()
PLACES_ON = "beach island farm hill bridge balcony roof street corner mountain".split()
CITIES = """london paris rome berlin madrid lisbon vienna prague dublin oslo stockholm helsinki athens
cairo tokyo delhi sydney toronto chicago boston moscow warsaw budapest brussels amsterdam geneva venice
milan naples barcelona seville edinburgh glasgow cardiff belfast bristol manchester liverpool leeds york
oxford cambridge brighton denver dallas houston miami seattle portland phoenix atlanta nairobi lagos lima
""".split()
COLOURS = "red blue green yellow black white brown grey pink purple golden silver".split()
SIZES = "big small little large tiny huge long short tall round flat heavy light narrow wide thick thin".split()
QUALITIES = """old new ancient modern clean dirty broken empty full cheap expensive beautiful ugly pretty
lovely strange famous simple rare wooden plastic soft hard warm cold shiny rusty dusty sharp smooth
rough useful""".split()
FOOD_ADJECTIVES = "sweet sour bitter salty spicy delicious tasty ripe juicy crispy fresh hot cold".split()
PERSON_ADJECTIVES = """kind clever happy sad angry tired hungry brave shy friendly lazy busy rich poor
proud calm nervous polite rude funny serious honest gentle curious lonely cheerful careful old young
""".split()
ANIMAL_ADJECTIVES = "wild hungry friendly lazy sleepy noisy fat clever young old tiny huge".split()
READING_ADJECTIVES = "long short old new famous strange boring interesting funny sad secret".split()
PLACE_ADJECTIVES = "old new busy quiet empty crowded small big dark cold warm noisy".split()
WEATHER = "sunny rainy windy cloudy foggy stormy snowy cold warm hot freezing wet dry".split()
ADVERBS = """quickly slowly quietly loudly carefully happily sadly suddenly finally gently politely
badly well early late again together alone""".split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
MONTHS = "january february march april may june july august september october november december".split()
SEASONS = "spring summer autumn winter".split()
DAY_PARTS = "morning afternoon evening".split()
SMALL_NUMBERS = "two three four five six seven eight nine ten eleven twelve".split()
TEENS = "thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
UNITS = "one two three four five six seven eight nine".split()

IRREGULAR_PLURALS = {
    "child": "children", "man": "men", "woman": "women", "fisherman": "fishermen", "policeman": "policemen",
    "sheep": "sheep", "deer": "deer", "fish": "fish", "goose": "geese", "mouse": "mice", "wolf": "wolves",
    "knife": "knives", "loaf": "loaves", "scarf": "scarves", "shelf": "shelves", "photo": "photos",
    "piano": "pianos", "radio": "radios", "cello": "cellos", "tomato": "tomatoes", "potato": "potatoes",
    "zoo": "zoos", "roof": "roofs",
}

# Transitive verbs (past:base) by the kind of object they take.
VERBS = {
    "food": """ate:eat cooked:cook bought:buy sold:sell cut:cut washed:wash tasted:taste baked:bake
        shared:share picked:pick ordered:order brought:bring dropped:drop wanted:want liked:like peeled:peel
        served:serve chose:choose""",
    "thing": """found:find lost:lose carried:carry bought:buy sold:sell painted:paint cleaned:clean
        fixed:fix broke:break opened:open moved:move hid:hide borrowed:borrow kept:keep took:take
        wrapped:wrap made:make needed:need used:use packed:pack stole:steal checked:check held:hold
        threw:throw dropped:drop""",
    "clothes": """wore:wear washed:wash bought:buy sold:sell ironed:iron folded:fold tore:tear mended:mend
        lost:lose found:find borrowed:borrow packed:pack""",
    "vehicle": """drove:drive parked:park washed:wash fixed:fix bought:buy sold:sell rented:rent painted:paint
        crashed:crash stopped:stop repaired:repair missed:miss caught:catch""",
    "reading": """read:read wrote:write sent:send printed:print signed:sign opened:open found:find lost:lose
        finished:finish copied:copy burned:burn""",
    "instrument": "played:play tuned:tune fixed:fix bought:buy sold:sell carried:carry dropped:drop",
    "animal": """fed:feed saw:see chased:chase followed:follow caught:catch watched:watch found:find lost:lose
        brushed:brush heard:hear counted:count rescued:rescue""",
    "person": """met:meet called:call visited:visit helped:help thanked:thank invited:invite saw:see heard:hear
        followed:follow phoned:phone asked:ask taught:teach paid:pay warned:warn greeted:greet""",
    "city": "visited:visit left:leave reached:reach loved:love explored:explore",
}
INTRANSITIVE = """slept:sleep laughed:laugh smiled:smile cried:cry waited:wait sang:sing danced:dance ran:run
walked:walk jumped:jump swam:swim worked:work played:play rested:rest shouted:shout whistled:whistle
arrived:arrive stayed:stay sat:sit stood:stand fell:fall listened:listen studied:study travelled:travel
climbed:climb hurried:hurry waved:wave yawned:yawn sneezed:sneeze snored:snore fished:fish""".split()
ANIMAL_INTRANSITIVE = "slept ran walked jumped swam rested sat stood fell waited climbed hid barked".split()
# Each kind of object takes the adjectives that suit it (ripe pears, not ripe trucks).
OBJECTS = {"food": FOODS, "thing": THINGS, "clothes": CLOTHES, "vehicle": VEHICLES, "reading": READING,
           "instrument": INSTRUMENTS, "animal": ANIMALS}
OBJECT_ADJECTIVES = {"food": FOOD_ADJECTIVES + COLOURS[:4] + SIZES[:4], "thing": COLOURS + SIZES + QUALITIES,
                     "clothes": COLOURS + SIZES[:4] + QUALITIES, "vehicle": COLOURS + SIZES[:6] + QUALITIES[:8],
                     "reading": READING_ADJECTIVES, "instrument": COLOURS + QUALITIES[:8],
                     "animal": ANIMAL_ADJECTIVES + COLOURS[:8]}
ALL_LISTS = [NAMES, PEOPLE, ANIMALS, FOODS, MASS_FOODS, THINGS, CLOTHES, VEHICLES, READING, INSTRUMENTS, PLACES_IN,
             PLACES_AT, PLACES_ON, CITIES, COLOURS, SIZES, QUALITIES, FOOD_ADJECTIVES, PERSON_ADJECTIVES,
             ANIMAL_ADJECTIVES, READING_ADJECTIVES, PLACE_ADJECTIVES, WEATHER, ADVERBS, DAYS, MONTHS, SEASONS,
             DAY_PARTS, SMALL_NUMBERS, TEENS, TENS, UNITS]
# Open word lists: a few of their words are kept out of training.
OPEN_LISTS = [NAMES, PEOPLE, ANIMALS, FOODS, MASS_FOODS, THINGS, CLOTHES, READING, PLACES_IN, PLACES_AT,
              PLACES_ON, CITIES, COLOURS, QUALITIES, FOOD_ADJECTIVES, PERSON_ADJECTIVES, WEATHER, ADVERBS]


def plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def article(next_word: str) -> str:
    vowel_sound = next_word[0] in "aeiou" and not next_word.startswith(("uni", "use", "eu", "one"))
    return "an" if vowel_sound or next_word.startswith(("hour", "honest")) else "a"


class Grammar:
    """Draws sentences; a grammar that excludes held-out words draws only from the others."""

    def __init__(self, rng: np.random.Generator, excluded: set[str]) -> None:
        self.rng = rng
        self.excluded = excluded

    def pick(self, words: list[str]) -> str:
        allowed = [w for w in words if w not in self.excluded]
        return allowed[self.rng.integers(len(allowed))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def verb(self, pairs: str, form: int) -> str:
        """form 0: past tense, 1: base form."""
        return self.pick(pairs.split()).split(":")[form]

    # ----------------------------------------------------------------- phrases
    def number(self, largest: bool = False) -> list[str]:
        if not largest or self.chance(0.6):
            return [self.pick(SMALL_NUMBERS)]
        if self.chance(0.3):
            return [self.pick(TEENS)]
        tens = [self.pick(TENS)]
        return tens + [self.pick(UNITS)] if self.chance(0.6) else tens

    def with_adjective(self, determiner: str | None, adjectives: list[str], noun: str, p: float = 0.45) -> list[str]:
        words = [self.pick(adjectives), noun] if self.chance(p) else [noun]
        if determiner == "a":
            determiner = article(words[0])
        return ([determiner] if determiner else []) + words

    def object_phrase(self, kind: str) -> list[str]:
        if kind == "person":
            roll = self.rng.random()
            if roll < 0.35:
                return [self.pick(NAMES)]
            if roll < 0.55:
                return [self.pick("me you him her us them".split())]
            return self.with_adjective(self.pick("the a my his her our their your".split()), PERSON_ADJECTIVES,
                                       self.pick(PEOPLE))
        if kind == "city":
            return [self.pick(CITIES)]
        if kind == "food" and self.chance(0.35):
            return self.with_adjective(self.pick("some the".split()), FOOD_ADJECTIVES, self.pick(MASS_FOODS))
        noun = self.pick(OBJECTS[kind])
        if self.chance(0.25):
            return self.number() + self.with_adjective(None, OBJECT_ADJECTIVES[kind], plural(noun))
        determiner = self.pick("the the a a my his her our their your this that".split())
        return self.with_adjective(determiner, OBJECT_ADJECTIVES[kind], noun)

    def subject(self, animals: bool = False) -> list[str]:
        roll = self.rng.random()
        if animals and roll < 0.3:
            return self.with_adjective("the", ANIMAL_ADJECTIVES, self.pick(ANIMALS))
        if roll < 0.35:
            return [self.pick(NAMES)]
        if roll < 0.5:
            return [self.pick("i you he she we they".split())]
        determiner = self.pick("the the a my his her our their your".split())
        return self.with_adjective(determiner, PERSON_ADJECTIVES, self.pick(PEOPLE), p=0.4)

    def place(self) -> list[str]:
        roll = self.rng.random()
        if roll < 0.2:
            return [self.pick("in from near".split()), self.pick(CITIES)]
        if roll < 0.35:
            places = PLACES_IN + PLACES_AT + PLACES_ON
            return [self.pick("near behind outside".split())] + self.with_adjective("the", PLACE_ADJECTIVES,
                                                                                      self.pick(places), p=0.3)
        preposition, places = [("in", PLACES_IN), ("at", PLACES_AT), ("on", PLACES_ON)][self.rng.integers(3)]
        return [preposition] + self.with_adjective("the", PLACE_ADJECTIVES, self.pick(places), p=0.3)

    def past_time(self) -> list[str]:
        roll = self.rng.random()
        if roll < 0.12:
            return ["yesterday"] + ([self.pick(DAY_PARTS)] if self.chance(0.4) else [])
        if roll < 0.3:
            return ["last", self.pick(["night", "week", "month", "year"] + SEASONS + DAYS)]
        if roll < 0.5:
            return ["on", self.pick(DAYS)] + ([self.pick(DAY_PARTS + ["night"])] if self.chance(0.4) else [])
        if roll < 0.62:
            return ["in", self.pick(MONTHS + SEASONS)]
        if roll < 0.72:
            return ["this", self.pick(DAY_PARTS)]
        if roll < 0.86:
            hour = self.pick(SMALL_NUMBERS + ["one"])
            return ["at", hour] + (["in", "the", self.pick(DAY_PARTS)] if self.chance(0.5) else [])
        return self.number(largest=True) + [self.pick(["days", "weeks", "months", "years"]), "ago"]

    def future_time(self) -> list[str]:
        roll = self.rng.random()
        if roll < 0.25:
            return ["tomorrow"] + ([self.pick(DAY_PARTS)] if self.chance(0.4) else [])
        if roll < 0.5:
            return ["next", self.pick(["week", "month", "year"] + SEASONS + DAYS)]
        if roll < 0.65:
            return ["on", self.pick(DAYS)]
        if roll < 0.8:
            return ["in"] + self.number() + [self.pick(["minutes", "hours", "days", "weeks"])]
        return [self.pick(["tonight", "soon", "later"])]

    def optional(self, p: float, phrase: Callable[[], list[str]]) -> list[str]:
        return phrase() if self.chance(p) else []

    # ----------------------------------------------------------------- templates
    def transitive(self) -> list[str]:
        kind = self.pick(list(VERBS))
        time = self.optional(0.6, self.past_time)
        opening, closing = (time, []) if self.chance(0.25) else ([], time)
        return (opening + self.subject() + [self.verb(VERBS[kind], 0)] + self.object_phrase(kind)
                + self.optional(0.5, self.place) + closing)

    def intransitive(self) -> list[str]:
        if self.chance(0.3):
            subject, verb = self.with_adjective("the", ANIMAL_ADJECTIVES, self.pick(ANIMALS)), self.pick(ANIMAL_INTRANSITIVE)
        else:
            subject, verb = self.subject(), self.verb(" ".join(INTRANSITIVE), 0)
        return (subject + [verb] + self.optional(0.4, lambda: [self.pick(ADVERBS)]) + self.optional(0.6, self.place)
                + self.optional(0.6, self.past_time))

    def future(self) -> list[str]:
        kind = self.pick(list(VERBS))
        return (self.subject() + ["will", self.verb(VERBS[kind], 1)] + self.object_phrase(kind)
                + self.optional(0.4, self.place) + self.optional(0.7, self.future_time))

    def question(self) -> list[str]:
        kind = self.pick(list(VERBS))
        opening = self.pick(["did", "did", "where did", "why did", "when did"]).split()
        place = self.optional(0.5, self.place) if opening[0] != "where" else []
        time = self.optional(0.4, self.past_time) if opening[0] != "when" else []
        return opening + self.subject() + [self.verb(VERBS[kind], 1)] + self.object_phrase(kind) + place + time

    def existential(self) -> list[str]:
        kind = self.pick(["food", "thing", "animal", "clothes", "vehicle"])
        many = self.number(largest=True)
        return (["there", "were"] + many + self.with_adjective(None, OBJECT_ADJECTIVES[kind], plural(self.pick(OBJECTS[kind])))
                + self.place() + self.optional(0.4, self.past_time))

    def weather(self) -> list[str]:
        degree = self.optional(0.4, lambda: [self.pick(["very", "quite", "too", "rather"])])
        return ["it", "was"] + degree + [self.pick(WEATHER), "in", self.pick(CITIES)] + self.past_time()

    def journey(self) -> list[str]:
        if self.chance(0.5):
            destination = [self.pick(CITIES)]
        else:
            destination = ["the"] + [self.pick(PLACES_IN + PLACES_AT + PLACES_ON)]
        how = self.optional(0.6, lambda: ["by", self.pick(["bus", "train", "car", "taxi", "plane", "boat", "bicycle"])])
        return (self.subject() + [self.pick(["went", "travelled", "walked", "drove", "flew", "returned"]), "to"]
                + destination + how + self.optional(0.6, self.past_time))

    def request(self) -> list[str]:
        kind = self.pick(["thing", "food", "clothes", "reading"])
        noun = self.pick(OBJECTS[kind])
        where = self.pick(["on", "under", "next to", "behind", "near"]).split() + ["the", self.pick(
            ["table", "desk", "shelf", "bed", "chair", "sofa", "door", "window", "box", "cupboard"])]
        return (self.optional(0.5, lambda: ["please"]) + [self.pick(["put", "leave", "place", "hide"])]
                + self.with_adjective("the", OBJECT_ADJECTIVES[kind], noun) + where
                + self.optional(0.3, lambda: ["now"]))

    def reported(self) -> list[str]:
        kind = self.pick(list(VERBS))
        return (self.subject() + [self.pick(["said", "thought", "knew", "heard"]), "that"] + self.subject()
                + [self.verb(VERBS[kind], 0)] + self.object_phrase(kind) + self.optional(0.4, self.place))

    def wish(self) -> list[str]:
        kind = self.pick(list(VERBS))
        return (self.subject() + [self.pick(["wanted", "tried", "hoped", "decided", "forgot"]), "to",
                                  self.verb(VERBS[kind], 1)] + self.object_phrase(kind)
                + self.optional(0.4, self.place) + self.optional(0.4, self.past_time))

    def possession(self) -> list[str]:
        kind = self.pick(["animal", "thing", "clothes", "vehicle", "instrument", "reading"])
        subject = self.subject()
        has = "have" if subject[0] in ("i", "you", "we", "they") else "has"
        return subject + [has] + self.number(largest=True) + self.with_adjective(
            None, OBJECT_ADJECTIVES[kind], plural(self.pick(OBJECTS[kind])))

    def age(self) -> list[str]:
        who = [self.pick(NAMES)] if self.chance(0.4) else [self.pick(["my", "his", "her", "our", "their", "the"]),
                                                            self.pick(PEOPLE)]
        return who + ["is"] + self.number(largest=True) + ["years", "old"]

    def description(self) -> list[str]:
        kind = self.pick(["thing", "animal", "clothes", "vehicle", "food"])
        degree = self.optional(0.35, lambda: [self.pick(["very", "quite", "too", "rather"])])
        return (["the", self.pick(OBJECTS[kind])] + self.place()
                + [self.pick(["was", "looked", "seemed"])] + degree + [self.pick(OBJECT_ADJECTIVES[kind])])

    def gift(self) -> list[str]:
        kind = self.pick(["thing", "food", "clothes", "reading", "instrument"])
        return (self.subject() + [self.pick(["gave", "sent", "showed", "brought", "sold"])]
                + self.object_phrase("person") + self.object_phrase(kind) + self.optional(0.5, self.past_time))

    def reason(self) -> list[str]:
        subject = self.subject()
        pronoun = {"i": "i", "you": "you", "we": "we", "they": "they"}.get(subject[0], self.pick(["he", "she"]))
        was = "were" if pronoun in ("you", "we", "they") else "was"
        return subject + [self.verb(" ".join(INTRANSITIVE), 0), "because", pronoun, was, self.pick(PERSON_ADJECTIVES)]

    def sequence(self) -> list[str]:
        first, second = self.pick(list(VERBS)), self.pick(list(VERBS))
        return (self.subject() + [self.verb(VERBS[first], 0)] + self.object_phrase(first) + ["and", "then"]
                + [self.verb(VERBS[second], 0)] + self.object_phrase(second))

    def sentence(self) -> str:
        templates = [(self.transitive, 5), (self.intransitive, 3), (self.future, 2), (self.question, 2),
                     (self.existential, 1), (self.weather, 1), (self.journey, 2), (self.request, 1), (self.reported, 1),
                     (self.wish, 2), (self.possession, 1), (self.age, 0.5), (self.description, 1), (self.gift, 1),
                     (self.reason, 1), (self.sequence, 1)]
        weights = np.array([w for _, w in templates], dtype=float)
        while True:
            words = templates[self.rng.choice(len(templates), p=weights / weights.sum())][0]()
            if MIN_WORDS <= len(words) <= MAX_WORDS:
                return " ".join(words)


def held_out_words(rng: np.random.Generator) -> set[str]:
    """A few words of each open list, among words that no other list, verb or template uses."""
    elsewhere = Counter(w for words in ALL_LISTS for w in set(words))
    elsewhere.update(form for pairs in [*VERBS.values(), " ".join(INTRANSITIVE)] for pair in pairs.split()
                     for form in pair.split(":"))
    elsewhere.update(ANIMAL_INTRANSITIVE)
    held = set()
    for words in OPEN_LISTS:
        candidates = sorted(w for w in set(words) if elsewhere[w] == 1)
        size = max(1, round(HELD_OUT_SHARE * len(set(words))))
        held.update(rng.choice(candidates, size=min(size, len(candidates)), replace=False).tolist())
    return held


def sentences(rng: np.random.Generator) -> tuple[dict[str, list[str]], set[str]]:
    """Per split, unique sentences (none shared between splits); training never uses the held-out words."""
    held = held_out_words(rng)
    train_grammar, test_grammar = Grammar(rng, held), Grammar(rng, set())
    seen: set[str] = set()
    out = {}
    for split, count in SPLITS.items():
        grammar = train_grammar if split == "train" else test_grammar
        out[split] = []
        while len(out[split]) < count:
            text = grammar.sentence()
            if text not in seen:
                seen.add(text)
                out[split].append(text)
    return out, held


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return AF.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()


def write_checked(path: Path, audio: np.ndarray, log_mel: torchaudio.transforms.MelSpectrogram) -> float:
    """Writes Ogg Opus, checks that it reads back with every sample, and returns the correlation
    of its log-mel spectrogram with the uncompressed audio's (how much of the speech survives)."""
    soundfile.write(path, audio, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=OPUS_COMPRESSION)
    decoded, rate = soundfile.read(path, dtype="float32")
    if rate != SAMPLE_RATE or len(decoded) != len(audio):
        raise RuntimeError(f"{path}: reads back {len(decoded)} samples at {rate} Hz, wrote {len(audio)} at {SAMPLE_RATE}")
    before, after = (torch.log(log_mel(torch.from_numpy(x)) + 1e-6).flatten() for x in (audio, decoded))
    return float(torch.corrcoef(torch.stack([before, after]))[0, 1])


def main(seed: int = 11) -> None:
    rng = np.random.default_rng(seed)
    texts, held = sentences(rng)
    log_mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=80)
    correlations = []
    for split, split_texts in texts.items():
        (OUT / split).mkdir(parents=True, exist_ok=True)
        manifest = {}
        for i, text in enumerate(split_texts):
            voice = f"{rng.choice(VOICES)}+{rng.choice(VARIANTS)}"
            audio = speak(text, voice, int(rng.integers(130, 190)), int(rng.integers(25, 75)))
            audio = (audio / max(1e-3, np.abs(audio).max()) * rng.uniform(0.3, 0.9)).astype(np.float32)
            uid = f"{split}-{i:04d}"
            correlations.append(write_checked(OUT / split / f"{uid}.ogg", audio, log_mel))
            manifest[uid] = {"wav": f"{{data_root}}/{split}/{uid}.ogg", "duration": round(len(audio) / SAMPLE_RATE, 6),
                             "words": text, "voice": voice}
        (OUT / f"{split}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    report(texts, held, correlations)


def report(texts: dict[str, list[str]], held: set[str], correlations: list[float]) -> None:
    train_vocab = {w for t in texts["train"] for w in t.split()}
    vocab = {w for ts in texts.values() for t in ts for w in t.split()}
    print(f"vocabulary {len(vocab)} words, {len(train_vocab)} in training; {len(held)} words held out of training")
    for split, split_texts in texts.items():
        manifest = json.loads((OUT / f"{split}.json").read_text())
        tokens = [w for t in split_texts for w in t.split()]
        oov = sum(w not in train_vocab for w in tokens) / len(tokens)
        hours = sum(e["duration"] for e in manifest.values()) / 3600
        print(f"{split}: {len(split_texts)} utterances, {hours:.2f} h, {len(tokens)} words, OOV rate {oov:.3f}")
    print(f"log-mel correlation with the uncompressed audio: mean {np.mean(correlations):.3f}, "
          f"min {np.min(correlations):.3f}")


if __name__ == "__main__":
    main()
