"""A damaged spool file whose rows a later start copies (the start that moved it aside was
killed mid-copy), with pushes spooled in the new file meanwhile: drained oldest first, as the
drainer promises (workers.engine.spool_drain), the kept file's pushes before the later ones."""

import signal

from tests.integration.test_spool_damaged import prepare_in_a_child, spool_with_a_damaged_page
from tests.integration.test_spool_salvage_retry import deliveries, put
from workers.adapters.spool import Spool


def test_the_kept_files_pushes_are_drained_before_those_spooled_after_it(tmp_path):
    """The new file gave the pushes spooled after the killed start ids 1, 2, 3, which the kept
    file's three oldest pushes held: those were given new ids past all the others, so the
    drain took the three new pushes first, then the kept file's from its fourth on, and its
    three oldest last (a branch's older push built after its newer ones). The new file's ids
    now start past the kept file's highest, before a row of it is copied."""
    spool_dir = tmp_path / "spool"
    spool_with_a_damaged_page(spool_dir, 200)
    assert prepare_in_a_child(spool_dir, file_size_limit=128 * 1024) == -signal.SIGXFSZ
    put(spool_dir, "gitlab:new-0", "gitlab:new-1", "gitlab:new-2")
    _, repaired = Spool(spool_dir).prepare()
    spooled = deliveries(spool_dir)
    assert len(repaired) == 1 and len(spooled) == repaired[0].rows + 3
    old = [int(d.rsplit("-", 1)[1]) for d in spooled[:-3]]
    assert spooled[:3] == ["gitlab:old-0", "gitlab:old-1", "gitlab:old-2"], spooled[:5]
    assert old == sorted(old) and spooled[-3:] == ["gitlab:new-0", "gitlab:new-1",
                                                   "gitlab:new-2"]
