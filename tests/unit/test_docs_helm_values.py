"""Every chart value the README and the runbooks tell an operator to set (helm `a.b`) is a
value of helm/ci-autoscaler/values.yaml: the runbooks of CIGitLabCatchUpFailing and
CIGitLabCommitStatusOff said to put the new token in helm `gitlab.apiToken`, which the chart
has not (its value is secrets.gitlabApiToken), so the token was never replaced."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/runbooks.md"]


def _has(values: dict, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True


@pytest.mark.parametrize("doc", DOCS)
def test_every_helm_value_a_doc_names_is_the_charts(doc):
    values = yaml.safe_load((ROOT / "helm/ci-autoscaler/values.yaml").read_text())
    text = (ROOT / doc).read_text()
    named = [(text[:m.start()].count("\n") + 1, m[1])
             for m in re.finditer(r"\bhelm `([a-zA-Z][\w]*(?:\.[\w]+)+)", text)]
    assert named, f"{doc} names no helm value: the pattern no longer finds them"
    missing = [(line, path) for line, path in named if not _has(values, path)]
    assert not missing, f"{doc}: values the chart has not: {missing}"
