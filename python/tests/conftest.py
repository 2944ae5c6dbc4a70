"""The server under test: `CAAS_SERVER` and `CAAS_TOKEN` (a user of one group) name a running
`caas serve --listen` whose first analysis prints `line 1..3`, sleeps as many seconds as its
config says, and writes `lines.txt` (`crates/cli/tests/python_pkg.rs` starts one on a local
store and on S3). `CAAS_OTHER_TOKEN` is a user of another group; `CAAS_RUN` is unique per run."""

import os

import pytest

import caas


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through crates/cli/tests/python_pkg.rs or set it")
    return value


@pytest.fixture(scope="session")
def run_id():
    return _env("CAAS_RUN")


@pytest.fixture(scope="session")
def client():
    c = caas.Client(_env("CAAS_SERVER"), _env("CAAS_TOKEN"))
    yield c
    c.close()


@pytest.fixture(scope="session")
def other():
    c = caas.Client(_env("CAAS_SERVER"), _env("CAAS_OTHER_TOKEN"))
    yield c
    c.close()
