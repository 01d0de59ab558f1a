"""kmock's matching of a request to its reactions, in constant time per reaction.

For every request, kmock 0.8 (``RawHandler._handle``) asks each reaction, in priority order,
``request in reaction._source``; the view's ``__contains__`` (``View.__contains__``) walks
every request the server ever served through the view's filters and looks for this one by
identity. With the emulator's 16 reactions that is 16 walks of the whole history per request:
quadratic in a test's requests, and it runs on the kmock loop's thread, in the test's process,
under the GIL the test's own threads need (a failover test's 100 builds spent ~15 s of CPU
there, more than the provisions themselves).

For the views the emulator and the tests build (a ``Filter`` of criteria, a ``Priority``, the
``Root``), membership is decided by the request alone: it is in a filter if it is in the
filter's source and the filter's criteria accept it, in a priority if it is in its source, in
the root if the root's history holds it (looked for from the newest end, where the request
being matched is). ``fast_contains`` answers that way; every other view (slices, groups,
exclusions, reactions, streams: those that depend on the order or on other requests) keeps
kmock's walk. tests/integration/test_kmock_matching.py holds the two to the same answers.

It assumes a filter's criteria answer from the request alone, as kmock's own and the suite's
do (methods, paths, actions, resources, regexes): kmock's walk asks a filter about every request
of the history, so a callable filter with state, or one that raises on some older request,
would be answered differently. It was read from kmock 0.8 (pyproject pins kmock==0.8); on an
upgrade, the equivalence test runs against the new kmock's walk.
"""

from __future__ import annotations

from typing import Any

from kmock._internal import dsl, rendering

# kmock's own: the slow, obvious reference (a walk of the view's requests).
walk_contains = dsl.View.__contains__


def fast_contains(view: dsl.View, item: Any) -> bool:
    """``item in view`` as kmock answers it, without walking the history where the view's kind
    allows (module docstring)."""
    if not isinstance(item, rendering.Request):
        return walk_contains(view, item)
    kind = type(view)
    if kind is dsl.Filter:
        return fast_contains(view._source, item) and bool(view.criteria(item))
    if kind is dsl.Priority:
        return fast_contains(view._source, item)
    if isinstance(view, dsl.Root) and type(view).__iter__ is dsl.Root.__iter__:
        return any(request is item for request in reversed(view._requests))
    return walk_contains(view, item)


def install() -> None:
    """Make ``in`` on kmock's filters, priorities and roots use `fast_contains`."""
    for kind in (dsl.Filter, dsl.Priority, dsl.Root):
        kind.__contains__ = fast_contains
