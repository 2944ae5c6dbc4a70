"""The JSON shapes of caas's HTTP API v1, as its OpenAPI document (`/api/v1/openapi.json`)
describes them (components/schemas); `tests/test_client.py` checks these keys against the
document a live server serves, so a change on either side fails the tests."""

from typing import Any, Dict, List, Optional, TypedDict


class DatasetView(TypedDict, total=False):
    name: str
    state: str
    reason: Optional[str]
    exit_code: Optional[int]
    cost_usd: float


class JobView(TypedDict, total=False):
    job: str
    group: str
    analysis: str
    timestamp: str
    state: str
    reason: Optional[str]
    created: Optional[str]
    finished: Optional[str]
    cost_usd: float
    datasets: List[DatasetView]
    # The [[then]] chain: the job folder this job follows, and those that follow it.
    parent: Optional[str]
    children: List[str]


class StoredFile(TypedDict):
    name: str
    size: int
    modified: str


class Uploaded(TypedDict):
    name: str
    size: int
    created: bool


class UploadState(TypedDict):
    id: str
    kind: str
    name: str
    size: int
    received: int


class ResultEntry(TypedDict):
    path: str
    size: int


class Cost(TypedDict, total=False):
    group: str
    tasks: int
    cost_usd: float
    wall_seconds: float
    cpu_seconds: float
    budget_usd: Optional[float]


class AnalysisInfo(TypedDict, total=False):
    name: str
    version: str
    description: Optional[str]
    config_schema: Optional[Dict[str, Any]]


class WhoAmI(TypedDict, total=False):
    user: str
    groups: List[str]
    read_only: bool
    expires: Optional[str]


#: schema name in the OpenAPI document -> the TypedDict above
SCHEMAS = {
    "DatasetView": DatasetView,
    "JobView": JobView,
    "StoredFile": StoredFile,
    "Uploaded": Uploaded,
    "UploadState": UploadState,
    "ResultEntry": ResultEntry,
    "Cost": Cost,
    "AnalysisInfo": AnalysisInfo,
    "WhoAmI": WhoAmI,
}

#: job states after which nothing more happens
TERMINAL_STATES = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "lost", "rejected"}
)
