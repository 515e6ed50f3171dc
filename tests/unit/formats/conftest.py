from pathlib import Path

import pytest

from consumer.pipeline import Pipeline
from interpretation import SourceRef, default_ruleset

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="session")
def pipeline():
    return Pipeline(default_ruleset(), max_message_bytes=1 << 20)


@pytest.fixture(scope="session")
def relevant(pipeline):
    return pipeline.relevant


@pytest.fixture
def here():
    return SourceRef(topic="lab.results", partition=0, offset=0)
