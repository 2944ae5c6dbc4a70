"""The client proper: one `httpx.Client` with the bearer token, the group's endpoints of
`/api/v1/groups/{group}/...`, resumable uploads (8 MiB parts, resumed from what the server says
it received, the upload id remembered in a small state file), jobs that wait and follow their
logs by server-sent events (reconnecting with `Last-Event-ID`), and results downloads that never
write outside the target folder."""

import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union
from urllib.parse import quote

import httpx

from ._progress import Progress, ProgressArg
from .types import (
    TERMINAL_STATES,
    AnalysisInfo,
    Cost,
    JobView,
    ResultEntry,
    StoredFile,
    Uploaded,
    WhoAmI,
)

PART_SIZE = 8 << 20


class CaasError(Exception):
    """A request the server refused or could not answer: `status` (0 when no answer came) and
    the server's own `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code < 400:
        return r
    try:
        message = r.json().get("error") or r.text
    except Exception:
        message = r.text or r.reason_phrase
    raise CaasError(r.status_code, message)


def _state_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "caas" / "uploads.json"


class Client:
    """A caas server (`caas serve --listen`) as one user: `server` is its base URL, `token` a
    `caas_<id>_<secret>` token (default: `CAAS_TOKEN`), `group` one of the token's groups
    (default: its only one)."""

    def __init__(
        self,
        server: Optional[str] = None,
        token: Optional[str] = None,
        group: Optional[str] = None,
        timeout: float = 60.0,
    ):
        server = server or os.environ.get("CAAS_SERVER")
        token = token or os.environ.get("CAAS_TOKEN")
        if not server:
            raise CaasError(0, "no server: give Client(server=...) or set CAAS_SERVER")
        if not token:
            raise CaasError(0, "no token: give Client(token=...) or set CAAS_TOKEN")
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self._group = group

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return _check(self._http.request(method, path, **kw))
        except httpx.TransportError as e:
            raise CaasError(0, f"the server {self.server} cannot be reached: {e}") from e

    @property
    def group(self) -> str:
        """The group used (the token's only group unless one was given)."""
        if self._group is None:
            groups = self.whoami()["groups"]
            if len(groups) != 1:
                raise CaasError(
                    0, f"the token has groups {groups}: give Client(..., group=...)"
                )
            self._group = groups[0]
        return self._group

    def _g(self, *parts: str) -> str:
        return "/groups/" + "/".join(quote(p, safe="") for p in (self.group, *parts))

    # -- who, what -------------------------------------------------------------------------

    def whoami(self) -> WhoAmI:
        return self._request("GET", "/whoami").json()

    def analyses(self) -> List[AnalysisInfo]:
        return self._request("GET", "/analyses").json()

    def inputs(self) -> List[StoredFile]:
        return self._request("GET", self._g("inputs")).json()

    def configs(self) -> List[StoredFile]:
        return self._request("GET", self._g("configs")).json()

    def cost(self) -> Cost:
        """What the group has spent (and its budget, when it has one)."""
        return self._request("GET", self._g("cost")).json()

    # -- uploads ---------------------------------------------------------------------------

    def upload(
        self,
        path: Union[str, os.PathLike],
        name: Optional[str] = None,
        kind: str = "inputs",
        progress: ProgressArg = True,
        part_size: int = PART_SIZE,
    ) -> Uploaded:
        """Upload a local file into the group's `inputs` (or `configs`) as `name` (default: its
        file name). Files above `part_size` go as a resumable upload: if an earlier upload of
        the same file was interrupted, it goes on from what the server received. Identical
        content already stored is fine; different content is a `CaasError` 409 (never
        replaced)."""
        if kind not in ("inputs", "configs"):
            raise CaasError(0, f"kind {kind!r}: use 'inputs' or 'configs'")
        p = Path(path)
        if not p.is_file():
            raise CaasError(0, f"{p} is not a regular file")
        name = name or p.name
        size = p.stat().st_size
        bar = Progress(f"upload {name}", progress)
        try:
            if size <= part_size:
                return self._upload_whole(p, name, kind, size, bar)
            return self._upload_parts(p, name, kind, size, part_size, bar)
        finally:
            bar.close()

    def _upload_whole(self, p: Path, name: str, kind: str, size: int, bar: Progress) -> Uploaded:
        def body() -> Iterator[bytes]:
            done = 0
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    done += len(chunk)
                    bar.update(done, size)
                    yield chunk

        r = self._request(
            "PUT", self._g(kind, name), content=body(), headers={"Content-Length": str(size)}
        )
        bar.update(size, size, "done", force=True)
        return r.json()

    def _remembered(self) -> Dict[str, str]:
        try:
            return json.loads(_state_file().read_text())
        except Exception:
            return {}

    def _remember(self, key: str, upload_id: Optional[str]) -> None:
        state = self._remembered()
        if upload_id is None:
            state.pop(key, None)
        else:
            state[key] = upload_id
        f = _state_file()
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(f)

    def _upload_parts(
        self, p: Path, name: str, kind: str, size: int, part_size: int, bar: Progress
    ) -> Uploaded:
        st = p.stat()
        key = json.dumps([self.server, self.group, kind, name, size, st.st_mtime_ns, str(p.resolve())])
        upload_id = self._remembered().get(key)
        received = None
        if upload_id:
            try:
                received = self._request("GET", self._g("uploads", upload_id)).json()["received"]
            except CaasError:
                upload_id = None
        if not upload_id:
            r = self._request(
                "POST", self._g("uploads"), json={"kind": kind, "name": name, "size": size}
            ).json()
            upload_id, received = r["id"], r["received"]
            self._remember(key, upload_id)
        with open(p, "rb") as f:
            while received < size:
                bar.update(received, size)
                f.seek(received)
                part = f.read(min(part_size, size - received))
                try:
                    r = self._request(
                        "PUT", self._g("uploads", upload_id), params={"offset": received}, content=part
                    )
                    received = r.json()["received"]
                except CaasError as e:
                    if e.status == 409:
                        # The server has another offset (a part it kept, or one it dropped).
                        received = self._request("GET", self._g("uploads", upload_id)).json()["received"]
                        continue
                    raise
        bar.update(size, size, "completing", force=True)
        r = self._request("POST", self._g("uploads", upload_id, "complete"))
        self._remember(key, None)
        return r.json()

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        data: Union[str, Sequence[str]],
        config: str,
        analysis: Optional[str] = None,
        timestamp: Optional[str] = None,
        webhook: Optional[str] = None,
    ) -> "Job":
        """Submit a job on datasets `data` (names in the group's inputs, or URLs such as
        `file:///shared/rec.csv` the server's `--data-source` rules allow, read where they
        live) with the config `config`; answers once the job is claimed. A job the server's checks reject (missing
        dataset, config schema, over budget) raises `CaasError` 422 with the reason."""
        body: Dict[str, Any] = {
            "dataname": [data] if isinstance(data, str) else list(data),
            "configname": config,
        }
        for k, v in (("analysis", analysis), ("timestamp", timestamp), ("webhook", webhook)):
            if v is not None:
                body[k] = v
        return Job(self, self._request("POST", self._g("jobs"), json=body).json())

    def job(self, job: str) -> "Job":
        """A job of the group by folder name or timestamp."""
        return Job(self, self._request("GET", self._g("jobs", job)).json())

    def jobs(self) -> List["Job"]:
        """The group's jobs, newest first."""
        return [Job(self, j) for j in self._request("GET", self._g("jobs")).json()]


class Job:
    """One job: its last known `view` (the API's Job JSON) and what can be done with it."""

    def __init__(self, client: Client, view: JobView):
        self._c = client
        self.view: JobView = view

    def __repr__(self) -> str:
        return f"<caas Job {self.name} {self.state}>"

    @property
    def name(self) -> str:
        return self.view["job"]

    @property
    def state(self) -> str:
        return self.view["state"]

    @property
    def cost_usd(self) -> float:
        return self.view.get("cost_usd", 0.0)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    def refresh(self) -> "Job":
        self.view = self._c._request("GET", self._c._g("jobs", self.name)).json()
        return self

    def wait(self, timeout: Optional[float] = None, progress: ProgressArg = True, interval: float = 0.5) -> "Job":
        """Poll until the job ends (or `timeout` seconds: `CaasError` 0); shows the datasets
        done out of all. Returns the job (see `ok`, `state`, `view["reason"]`)."""
        bar = Progress(f"job {self.name}", progress)
        t0 = time.monotonic()
        try:
            while True:
                self.refresh()
                ds = self.view.get("datasets") or []
                ended = sum(1 for d in ds if d.get("state") in TERMINAL_STATES)
                bar.update(ended, max(len(ds), 1), self.state, force=self.done)
                if self.done:
                    return self
                if timeout is not None and time.monotonic() - t0 > timeout:
                    raise CaasError(0, f"job {self.name} still {self.state} after {timeout} s")
                time.sleep(interval)
                interval = min(interval * 1.5, 5.0)
        finally:
            bar.close()

    def certificate(self) -> str:
        return self._c._request("GET", self._c._g("jobs", self.name, "certificate")).text

    def logs(self, dataset: Optional[str] = None, stream: str = "stdout", follow: bool = False) -> Iterator[str]:
        """The task's output: what is there now (one chunk), or with `follow=True` each chunk
        as it is written until the task ends (reconnecting where it left off)."""
        params = {"stream": stream}
        if dataset is not None:
            params["dataset"] = dataset
        path = self._c._g("jobs", self.name, "logs")
        if not follow:
            yield self._c._request("GET", path, params=params).text
            return
        last: Optional[str] = None
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                with self._c._http.stream("GET", path, params=params, headers=headers, timeout=None) as r:
                    if r.status_code >= 400:
                        r.read()
                        _check(r)
                    event, data, ev_id = None, [], None
                    for line in r.iter_lines():
                        if line == "":
                            if event == "end":
                                return
                            if data:
                                if ev_id is not None:
                                    last = ev_id
                                yield "\n".join(data)
                            event, data, ev_id = None, [], None
                        elif line.startswith(":"):
                            continue
                        elif line.startswith("data:"):
                            data.append(line[5:][1:] if line[5:6] == " " else line[5:])
                        elif line.startswith("id:"):
                            ev_id = line[3:].strip()
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                    failures = 0
            except httpx.TransportError as e:
                failures += 1
                if failures > 5:
                    raise CaasError(0, f"the log stream keeps failing: {e}") from e
                time.sleep(min(2**failures * 0.2, 5))

    @property
    def results(self) -> "Results":
        return Results(self)

    def cancel(self) -> "Job":
        """Ask for the job to stop (it ends `cancelled`)."""
        self.view = self._c._request("POST", self._c._g("jobs", self.name, "cancel")).json()
        return self


class Results:
    """A job's results (`process_results/` and `logs/`)."""

    def __init__(self, job: Job):
        self._job = job

    def list(self) -> List[ResultEntry]:
        c = self._job._c
        return c._request("GET", c._g("jobs", self._job.name, "results")).json()

    def read(self, path: str) -> bytes:
        c = self._job._c
        return c._request("GET", c._g("jobs", self._job.name, "results") + "/" + quote(path, safe="/")).content

    def download(self, dest: Union[str, os.PathLike], progress: ProgressArg = True) -> List[Path]:
        """Every result file into `dest/<path>`, streamed; never outside `dest` (a path with
        `..` or absolute is refused). Returns the files written."""
        c = self._job._c
        root = Path(dest).resolve()
        entries = self.list()
        total = sum(e["size"] for e in entries)
        bar = Progress(f"results of {self._job.name}", progress)
        done, written = 0, []
        try:
            for e in entries:
                rel = PurePosixPath(e["path"])
                if rel.is_absolute() or ".." in rel.parts:
                    raise CaasError(0, f"the server sent an unsafe result path {e['path']!r}")
                target = root.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                url = c._g("jobs", self._job.name, "results") + "/" + quote(e["path"], safe="/")
                tmp = target.with_name(target.name + ".part")
                with c._http.stream("GET", url) as r:
                    if r.status_code >= 400:
                        r.read()
                        _check(r)
                    with open(tmp, "wb") as f:
                        for chunk in r.iter_bytes():
                            f.write(chunk)
                            done += len(chunk)
                            bar.update(done, total)
                tmp.replace(target)
                written.append(target)
            bar.update(total, total, "done", force=True)
        finally:
            bar.close()
        return written
