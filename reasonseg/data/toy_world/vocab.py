"""The fixed vocabulary of the shapes world: shapes, colours, sizes and the little world knowledge queries use.

Everything a query may say is defined here, so the docs (``docs/toy_world.md``) and the generator cannot drift.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "heart")

# nominal RGB of each colour; objects get a small per-object jitter (COLOUR_JITTER) around it
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 36, 36),
    "green": (32, 158, 62),
    "blue": (36, 82, 222),
    "yellow": (246, 210, 32),
    "purple": (128, 50, 178),
    "orange": (246, 128, 18),
    "white": (250, 250, 250),
    "black": (22, 22, 22),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
COLOUR_JITTER = 10  # +- per channel

# size class -> range of the object's extent (width of the unrotated shape) as a fraction of the image's shorter side
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.11, 0.16),
    "medium": (0.20, 0.27),
    "large": (0.33, 0.42),
}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
MIN_EXTENT_PX = 16  # no object is narrower than this, whatever the image size

# image sides and the background kinds
MIN_SIDE, MAX_SIDE = 128, 640
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noisy")
# a background colour keeps at least this RGB distance from every nominal object colour
MIN_BACKGROUND_DISTANCE = 80.0

# an object stays at least this fraction visible when later objects overlap it
MIN_VISIBLE_FRACTION = 0.7

# corners (vertices of the outline, convex and concave): a 5-pointed star has 5 tips and 5 inner corners
CORNERS: dict[str, int] = {"star": 10, "hexagon": 6, "square": 4, "triangle": 3, "circle": 0, "heart": 0}
SIDES: dict[str, int] = {"hexagon": 6, "square": 4, "triangle": 3}

# colour mixing (paint): the only mixes queries use
MIXES: dict[str, tuple[str, str]] = {
    "orange": ("red", "yellow"),
    "green": ("blue", "yellow"),
    "purple": ("red", "blue"),
}

# everyday things of a colour: "the shape that is the colour of grass"
COLOUR_THINGS: dict[str, tuple[str, ...]] = {
    "red": ("a ripe tomato", "a strawberry", "a fire engine"),
    "green": ("grass", "a frog", "a lime"),
    "blue": ("a clear sky", "the sea", "a blueberry"),
    "yellow": ("a banana", "a lemon", "a rubber duck"),
    "purple": ("a bunch of grapes", "a plum", "lavender"),
    "orange": ("a carrot", "a pumpkin", "an orange"),
    "white": ("snow", "milk", "a cloud"),
    "black": ("coal", "a crow", "the night sky"),
}

# everyday clues to a shape: (noun-phrase clause after "the shape", the same as a question, the fact behind it)
SHAPE_CLUES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "circle": (("that looks like a wheel", "Which shape looks like a wheel?", "A wheel is round like a circle"),
               ("that looks like a coin", "Which shape looks like a coin?", "A coin is round like a circle"),
               ("that looks like a full moon", "Which shape looks like a full moon?",
                "A full moon looks like a circle")),
    "square": (("that looks like a chessboard square", "Which shape looks like a square on a chessboard?",
                "The squares of a chessboard are squares"),
               ("that looks like a sticky note", "Which shape looks like a sticky note?", "A sticky note is square"),
               ("that looks like a face of a die", "Which shape looks like a face of a die?",
                "Each face of a die is a square")),
    "triangle": (("that looks like a slice of pizza", "Which shape looks like a slice of pizza?",
                  "A slice of pizza is roughly a triangle"),
                 ("that looks like a yield sign", "Which shape looks like a yield sign?", "A yield sign is a triangle"),
                 ("that looks like a sail", "Which shape looks like a sail?", "A sail is often a triangle")),
    "star": (("that looks like a starfish", "Which shape looks like a starfish?",
              "A starfish has five arms like a star"),
             ("you could put on top of a Christmas tree", "Which shape could you put on top of a Christmas tree?",
              "A star is the usual Christmas tree topper"),
             ("that looks like a sheriff's badge", "Which shape looks like a sheriff's badge?",
              "A sheriff's badge is a star")),
    "hexagon": (("that looks like a honeycomb cell", "Which shape looks like a honeycomb cell?",
                 "Honeycomb cells are hexagons"),
                ("that looks like a hex nut", "Which shape looks like a hex nut?",
                 "A hex nut has six sides like a hexagon"),
                ("that looks like a pencil's cross-section", "Which shape looks like the end of a pencil?",
                 "A pencil's cross-section is a hexagon")),
    "heart": (("you would draw on a valentine card", "Which shape would you draw on a valentine card?",
               "Hearts are drawn on valentine cards"),
              ("that stands for love", "Which shape stands for love?", "A heart is the symbol of love"),
              ("you would send to someone you love", "Which shape would you send to someone you love?",
               "A heart is the symbol of love")),
}

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def plural(shape: str) -> str:
    return shape + "s"


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def join_words(items: list[str]) -> str:
    """['a'] -> 'a'; ['a', 'b'] -> 'a and b'; ['a', 'b', 'c'] -> 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def seg_list(n: int) -> str:
    """The several-targets convention: '[SEG]', '[SEG] and [SEG]', '[SEG], [SEG] and [SEG]'."""
    return join_words(["[SEG]"] * n)
