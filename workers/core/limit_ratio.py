"""A LimitRange's maxLimitRequestRatio as the API server checks it, and the most limit it lets
a request have. Pure.

kubernetes plugin/pkg/admission/limitranger/admission.go limitRequestRatioConstraint takes the
request, the limit and the ratio as whole milli-values (requestLimitEnforcedValues:
Quantity.MilliValue, rounded up; plain Value only past MaxMilliValue, 9.2e15, which no pod
reaches) and compares them in float64: `float64(lim) / float64(req) * 1000 >
float64(ratio.MilliValue())` refuses, 403 "cpu max limit to request ratio per Container is 2,
but provided ratio is 3.000000.". The float64 division can land above a ratio the exact
quotient meets (1000m request, 2007m limit, ratio 2.007: 2007.0000000000002 > 2007), so the
most limit is found as the API server will judge it, not by exact arithmetic alone.
"""

import math
from decimal import Decimal

from workers.core.quantity import cpu_millis


def milli_value(text: str | int | float) -> int:
    """resource.Quantity.MilliValue: the quantity in thousandths, rounded up, of any resource
    (quantity.cpu_millis is that reckoning, named for CPU)."""
    return cpu_millis(text)


def ratio_met(request_milli: int, limit_milli: int, ratio: str) -> bool:
    """Whether limitRequestRatioConstraint admits this request and limit (milli-values); a
    request or limit of 0 never is ("no request is specified or request is 0")."""
    if request_milli <= 0 or limit_milli <= 0:
        return False
    return not float(limit_milli) / float(request_milli) * 1000 > float(milli_value(ratio))


def most_within(request_milli: int, ratio: str) -> int:
    """The largest limit (milli-value) the ratio admits for this request: the exact
    request x ratio, rounded down, and lower while the API server's float64 check refuses it
    (a step or two at most). The request itself at least: a ratio is 1 or more
    (ValidateLimitRange), and limit = request meets it."""
    most = math.floor(Decimal(request_milli) * milli_value(ratio) / 1000)
    while most > request_milli and not ratio_met(request_milli, most, ratio):
        most -= 1
    return max(most, request_milli)


def from_milli(resource: str, milli: int) -> str:
    """A quantity at most `milli` thousandths: CPU in whole millicores, any other in whole
    units (bytes), as the plugin compares them (requestLimitEnforcedValues: milli-values)."""
    if resource == "cpu":
        return f"{milli}m"
    return str(milli // 1000)
