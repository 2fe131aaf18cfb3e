"""The names plid gives things, at the bottom of the house so that every layer may import them: the mask classes
and their colours, the disc levels, and SPIDER's per-disc gradings (``discs.csv``).

Gradings: which are 0/1 and which are ordinal grades, and how a grade is written as a class index. A multi-task
classifier (:mod:`plid.models.grading`) has one head per grading: a two-class head for a binary grading, a
cumulative-logit (CORAL) head for an ordinal one. Class indices start at 0: Pfirrmann grade ``g`` (1-5) is class
``g - 1``, Modic type ``m`` (0-3) is class ``m``. A missing grading is class ``-1`` (masked out of the loss and
the metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

from plid.errors import UserInputError

# mask classes, as masks/<image>.png stores them (the data contract)
CLASS_NAMES = ("background", "vertebra", "disc", "canal")
# RGB (0-255) of each class in every overlay and figure: Okabe-Ito colours, apart for colour-blind readers;
# background (the first) is never drawn
CLASS_COLOURS = ((0, 0, 0), (0, 114, 178), (230, 159, 0), (204, 121, 167))
# disc levels from the lowest (``ivd_label`` 1, L5/S1 normally) up
LEVEL_NAMES = ("L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2", "T12/L1", "T11/T12", "T10/T11", "T9/T10")

MISSING = -1


@dataclass(frozen=True)
class Grading:
    name: str
    num_classes: int = 2
    first: int = 0  # the grade of class 0 (Pfirrmann starts at 1)
    ordinal: bool = False

    def grade(self, index: int) -> int:
        """The grade as discs.csv writes it, from a class index."""
        return int(index) + self.first

    def index(self, value) -> int:
        """The class index of a discs.csv value (NaN or empty: :data:`MISSING`)."""
        if value is None or value != value:  # NaN
            return MISSING
        index = int(value) - self.first
        if not 0 <= index < self.num_classes or float(value) != int(value):
            raise ValueError(f"{self.name}={value!r} is not one of {list(range(self.first, self.first + self.num_classes))}")
        return index


ORDINAL = {"pfirrman_grade": Grading("pfirrman_grade", 5, 1, True), "modic": Grading("modic", 4, 0, True)}
BINARY = ("up_endplate", "low_endplate", "spondylolisthesis", "disc_herniation", "disc_narrowing", "disc_bulging")
# every grading of discs.csv, in its column order
ALL_GRADINGS = ("modic", "up_endplate", "low_endplate", "spondylolisthesis", "disc_herniation", "disc_narrowing",
                "disc_bulging", "pfirrman_grade")


def grading(name: str) -> Grading:
    """The :class:`Grading` of a discs.csv column; a column not known here is taken as 0/1."""
    return ORDINAL.get(name) or Grading(name)


def gradings(names) -> list[Grading]:
    names = list(names or [])
    if not names:
        raise UserInputError(f"data.targets is empty; give some of {list(ALL_GRADINGS)}")
    if len(set(names)) != len(names):
        raise UserInputError(f"data.targets={names} names a grading twice")
    return [grading(n) for n in names]
