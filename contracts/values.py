"""Value types shared by the v1 payloads: codes, identifiers and money, as CONTRACT.md defines them."""

from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)

CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
"""ISO 3166-1 alpha-2, upper case. The shape is checked, not membership of the ISO list."""

AirportCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
"""IATA 3-letter airport code, upper case."""

AirlineCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{2}$")]

CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]

PhoneNumber = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]
"""E.164: a plus sign and 7 to 15 digits."""

EmailAddress = Annotated[str, StringConstraints(pattern=r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$", max_length=254)]


def _not_a_number(value: object) -> object:
    """JSON numbers are refused where the contract asks for strings (money, timestamps)."""
    if isinstance(value, (int, float)):  # a tuple: isinstance over a union type is slower, per field
        raise ValueError("must be a string, not a number")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]
"""RFC 3339 timestamp; an offset (or Z) is required; epoch numbers are refused."""

Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]

USPS_STATE_CODES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH "
    "NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY AS GU MP PR VI".split()
)


def _usps_state(value: str) -> str:
    if value not in USPS_STATE_CODES:
        raise ValueError("must be a 2-letter USPS state or territory code")
    return value


UsState = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{2}$"),
    AfterValidator(_usps_state),
]


def _two_decimals(value: Decimal) -> Decimal:
    if value.as_tuple().exponent != -2:
        raise ValueError("money must have exactly two decimals")
    if value < 0:
        raise ValueError("money must not be negative")
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_not_a_number),
    AfterValidator(_two_decimals),
    PlainSerializer(lambda value: f"{value:.2f}", return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]+\.[0-9]{2}$"}),
]
"""A decimal string with exactly two decimals, e.g. "1000.00"; never a float."""
