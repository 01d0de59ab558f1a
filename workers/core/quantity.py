"""Kubernetes resource quantities ("500m", "2Gi", "1.5") as numbers, and back."""

import re
from decimal import Decimal, InvalidOperation, Overflow

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
            "P": Decimal(10**15), "E": Decimal(10**18)}
# The number a quantity starts with, as Kubernetes reads it (apimachinery resource.Quantity:
# <signedNumber> ::= <sign><digits> | <digits>.<digits> ... and the decimal exponent e<n>),
# ASCII digits only. Decimal() took "NaN" (a traceback from the comparison below), "Infinity",
# "1_000", "2 " (of "2 Gi") and non-ASCII digits, none of which the API server takes.
# "No quantity may represent a number greater than 2^63-1" (kubernetes.io, Quantity): beyond
# it the API server caps what it stores, and here 1e999999999 was a decimal.Overflow and
# 1e5000 an integer too long to print (format_cpu), tracebacks of check-config or a build.
LARGEST = Decimal(2**63 - 1)
# resource.ParseQuantity's whole grammar (k8s.io/apimachinery/pkg/api/resource/quantity.go): a
# signed decimal, then one binary suffix, decimal suffix or exponent (e or E: "1E3" is 1000);
# no space anywhere. A suffix after an exponent ("1e3Gi") is refused there too.
# workers.config.pod_schema checks a template's quantities with it.
QUANTITY = re.compile(r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
                      r"(?:(?P<suffix>[KMGTPE]i|[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?")


def parse_quantity(text: str | int | float) -> Decimal:
    """The value of a Kubernetes quantity, in base units (cores, bytes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        number = Decimal(str(text))
        # YAML's .inf and .nan: an OverflowError traceback later
        if not number.is_finite() or not 0 <= number <= LARGEST:
            raise ValueError(f"not a quantity: {text!r}")
        return number
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"not a quantity: {text!r}")
    found = QUANTITY.fullmatch(text.strip())
    if not found:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix, exponent = found.group("number", "suffix", "exponent")
    factor = _BINARY.get(suffix) or _DECIMAL[suffix or ""]
    if exponent is not None:
        number = f"{number}e{exponent}"
    try:
        value = Decimal(number) * factor
    except (InvalidOperation, Overflow):
        raise ValueError(f"not a quantity: {text!r}") from None
    if value < 0 or not value.is_finite():
        raise ValueError(f"not a quantity: {text!r}")
    if value > LARGEST:
        raise ValueError(f"not a quantity: {text!r} is more than Kubernetes' largest, 2^63-1")
    return value


def cpu_millis(text: str | int | float) -> int:
    """CPU quantity in whole millicores (Kubernetes rounds up below 1m)."""
    return int((parse_quantity(text) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def times_factor(millis: int, factor: float) -> int:
    """millis x factor (a cpuLimitFactor), rounded up to a whole millicore, in exact decimal:
    in binary floating point 100 x 1.1 is 110.00000000000001, so a 100m request got a 111m
    limit, which a namespace's maxLimitRequestRatio of 1.1 refuses."""
    product = Decimal(millis) * Decimal(str(factor))
    return int(product.to_integral_value(rounding="ROUND_CEILING"))


def memory_bytes(text: str | int | float) -> int:
    """Memory quantity in whole bytes."""
    return int(parse_quantity(text).to_integral_value(rounding="ROUND_CEILING"))


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_memory(nbytes: int) -> str:
    for suffix in ("Gi", "Mi", "Ki"):
        if nbytes % _BINARY[suffix] == 0 and nbytes >= _BINARY[suffix]:
            return f"{nbytes // _BINARY[suffix]}{suffix}"
    return str(nbytes)
