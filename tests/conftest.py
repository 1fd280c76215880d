import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the embedded dataset is generated once (cached) under the repo's datasets/, as `make demo` does
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)
