"""The rule text checked character by character and cut into tokens."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .language import _MAX_NUMBER_DIGITS, MAX_TEXT_LENGTH, RuleError


class _TokenType(StrEnum):
    NUMBER = "number"
    TIME = "time"
    NAME = "name"
    OPERATOR = "operator"
    END = "end"


@dataclass(frozen=True)
class _Token:
    type: _TokenType
    text: str  # names lowercased
    position: int


_WHITESPACE = frozenset(" \t\r\n")
_TWO_CHARACTER_OPERATORS = frozenset({">=", "<=", "==", "!="})
_ONE_CHARACTER_OPERATORS = frozenset("+-*/(),<>")
_CHARACTER_HINTS = {
    "=": "use == to compare for equality",
    "!": "use != for 'not equal', or the word not",
    "&": "use the word and",
    "|": "use the word or",
    "'": "rules contain no text strings",
    '"': "rules contain no text strings",
    ":": "times of day are written HH:MM, e.g. 09:30",
}


def _is_name_start(character: str) -> bool:
    return character.isascii() and (character.isalpha() or character == "_")


def _is_name_part(character: str) -> bool:
    return character.isascii() and (character.isalnum() or character == "_")


def _is_digit(character: str) -> bool:
    return "0" <= character <= "9"


def _check_characters(text: str) -> None:
    if len(text) > MAX_TEXT_LENGTH:
        raise RuleError(f"a rule is at most {MAX_TEXT_LENGTH} characters long", MAX_TEXT_LENGTH)
    for position, character in enumerate(text):
        if character in _WHITESPACE:
            continue
        if not character.isascii():
            raise RuleError(f"character {ascii(character)} is not allowed; rules use plain ASCII", position)
        if not character.isprintable():
            raise RuleError(f"control character {ascii(character)} is not allowed", position)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    length = len(text)
    index = 0
    while index < length:
        character = text[index]
        if character in _WHITESPACE:
            index += 1
        elif _is_digit(character):
            token = _read_number_or_time(text, index)
            tokens.append(token)
            index += len(token.text)
        elif _is_name_start(character):
            end = index + 1
            while end < length and _is_name_part(text[end]):
                end += 1
            tokens.append(_Token(_TokenType.NAME, text[index:end].lower(), index))
            index = end
        elif text[index : index + 2] in _TWO_CHARACTER_OPERATORS:
            tokens.append(_Token(_TokenType.OPERATOR, text[index : index + 2], index))
            index += 2
        elif character in _ONE_CHARACTER_OPERATORS:
            tokens.append(_Token(_TokenType.OPERATOR, character, index))
            index += 1
        else:
            hint = _CHARACTER_HINTS.get(character)
            message = f"unexpected character {character!r}" + (f"; {hint}" if hint else "")
            raise RuleError(message, index)
    tokens.append(_Token(_TokenType.END, "", length))
    return tokens


def _read_number_or_time(text: str, start: int) -> _Token:
    length = len(text)
    end = start
    while end < length and _is_digit(text[end]):
        end += 1
    if end < length and text[end] == ":":
        return _read_time(text, start, end)
    if end < length and text[end] == ".":
        if end + 1 >= length or not _is_digit(text[end + 1]):
            raise RuleError("expected a digit after the decimal point", end + 1)
        end += 1
        while end < length and _is_digit(text[end]):
            end += 1
    if end < length and (_is_name_part(text[end]) or text[end] == "."):
        if text[end] in "eE":
            raise RuleError("numbers are plain decimals like 70 or 0.5; exponents are not supported", end)
        raise RuleError(f"unexpected {text[end]!r} right after a number", end)
    if end - start - text.count(".", start, end) > _MAX_NUMBER_DIGITS:
        raise RuleError(f"a number has at most {_MAX_NUMBER_DIGITS} digits", start)
    return _Token(_TokenType.NUMBER, text[start:end], start)


def _read_time(text: str, start: int, colon: int) -> _Token:
    minutes_end = colon + 1
    while minutes_end < len(text) and _is_name_part(text[minutes_end]):
        minutes_end += 1
    literal = text[start:minutes_end]
    if colon - start != 2 or minutes_end - colon != 3 or not literal[3:].isdigit():
        raise RuleError("times of day are written HH:MM, e.g. 09:30", start)
    if int(literal[:2]) > 23 or int(literal[3:]) > 59:
        raise RuleError(f"time of day {literal} is not between 00:00 and 23:59", start)
    return _Token(_TokenType.TIME, literal, start)
