"""TES 1.0 clients unchanged, and HTTP Basic credentials on the TES routes, against a real
`caas serve --listen`: every answer a task that sets no 1.1 field gets holds only TES 1.0's
fields and states (the lists below are TES 1.0's schemas, ga4gh/task-execution-schemas v1.0);
py-tes 1.1 and curl (`--netrc`, and a URL's user part) reach the routes with the API token as
the password, under the same scopes, expiry and groups.

Run by `crates/cli/tests/tes_compat.rs`, which passes CAAS_TES_URL, CAAS_TOKEN (group lab),
CAAS_OTHER_TOKEN (group other), CAAS_READONLY_TOKEN, CAAS_EXPIRED_TOKEN, CAAS_RUN, CAAS_TMP.
"""

import os
import subprocess
import time
from urllib.parse import urlsplit

import requests
import tes

URL = os.environ["CAAS_TES_URL"]
TOKEN = os.environ["CAAS_TOKEN"]
OTHER = os.environ["CAAS_OTHER_TOKEN"]
READONLY = os.environ["CAAS_READONLY_TOKEN"]
EXPIRED = os.environ["CAAS_EXPIRED_TOKEN"]
RUN = os.environ["CAAS_RUN"]
TMP = os.environ["CAAS_TMP"]
IMAGE = "local/busybox:test"
API = URL + "/ga4gh/tes/v1"

# TES 1.0's objects and their fields; its states.
V10 = {
    "task": {"id", "state", "name", "description", "inputs", "outputs", "resources", "executors", "volumes", "tags", "logs", "creation_time"},
    "input": {"name", "description", "url", "path", "type", "content"},
    "output": {"name", "description", "url", "path", "type"},
    "resources": {"cpu_cores", "preemptible", "ram_gb", "disk_gb", "zones"},
    "executor": {"image", "command", "workdir", "stdin", "stdout", "stderr", "env"},
    "task_log": {"logs", "metadata", "start_time", "end_time", "outputs", "system_logs"},
    "executor_log": {"start_time", "end_time", "stdout", "stderr", "exit_code"},
    "output_log": {"url", "path", "size_bytes"},
}
V10_STATES = {"UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}


def only(kind, obj, required=()):
    extra = set(obj) - V10[kind]
    assert not extra, f"{kind} carries fields TES 1.0 does not have: {extra} in {obj}"
    missing = set(required) - set(obj)
    assert not missing, f"{kind} lacks what TES 1.0 requires: {missing} in {obj}"


def check_v10(t):
    only("task", t)
    assert t["state"] in V10_STATES, t["state"]
    for i in t.get("inputs", []):
        only("input", i, ("path", "type"))
    for o in t.get("outputs", []):
        only("output", o, ("path", "type", "url"))
    if "resources" in t:
        only("resources", t["resources"])
    for e in t.get("executors", []):
        only("executor", e, ("image", "command"))
    for log in t.get("logs", []):
        only("task_log", log, ("logs", "outputs"))
        for e in log["logs"]:
            only("executor_log", e, ("exit_code",))
        for o in log["outputs"]:
            only("output_log", o, ("url", "path", "size_bytes"))


def bearer(path, token=TOKEN, method="GET", **kw):
    return requests.request(method, API + path, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw)


def basic(path, password, user="anyone", method="GET", **kw):
    return requests.request(method, API + path, auth=(user, password), timeout=30, **kw)


def test_answers_hold_only_tes_1_0_fields_and_states():
    body = {
        "name": f"v10-{RUN}",
        "inputs": [
            {"path": "/in/a.txt", "content": "a\n"},
            {"path": "/in/b.txt", "content": "b\n", "type": "FILE"},
        ],
        "outputs": [{"path": "/out/a.txt", "url": f"caas://lab/inputs/v10-{RUN}/a.txt"}],
        "resources": {"cpu_cores": 1},
        "executors": [{"image": IMAGE, "command": ["sh", "-c", "cp /in/a.txt /out/a.txt; echo hi; echo oops >&2"]}],
        "tags": {"run": RUN},
    }
    r = bearer("/tasks", method="POST", json=body)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"id"}
    task_id = r.json()["id"]
    seen = set()
    deadline = time.time() + 120
    while time.time() < deadline:
        for view in ("MINIMAL", "BASIC", "FULL"):
            t = bearer(f"/tasks/{task_id}", params={"view": view}).json()
            check_v10(t)
            seen.add(t["state"])
        if t["state"] == "COMPLETE":
            break
        time.sleep(0.2)
    assert "COMPLETE" in seen, seen
    full = bearer(f"/tasks/{task_id}", params={"view": "FULL"}).json()
    assert [i["type"] for i in full["inputs"]] == ["FILE", "FILE"]
    assert full["outputs"][0]["type"] == "FILE"
    assert full["logs"][0]["logs"][0]["exit_code"] == 0
    assert full["logs"][0]["outputs"][0]["path"] == "/out/a.txt"
    for view in ("MINIMAL", "BASIC", "FULL"):
        for t in bearer("/tasks", params={"view": view, "name_prefix": f"v10-{RUN}"}).json()["tasks"]:
            check_v10(t)
    # The same task through the paths of clients before 1.0.
    legacy = requests.get(f"{URL}/v1/tasks/{task_id}", params={"view": "FULL"}, auth=("x", TOKEN), timeout=30)
    assert legacy.status_code == 200 and legacy.json()["id"] == task_id
    check_v10(legacy.json())
    info = requests.get(f"{URL}/v1/tasks/service-info", timeout=30).json()
    assert set(info) == {"name", "doc", "storage"}, info
    # A 1.1 field the task sets is kept (a 1.1 client reads back what it sent).
    r = bearer("/tasks", method="POST", json={"executors": [{"image": IMAGE, "command": ["false"], "ignore_error": True}]})
    t = bearer(f"/tasks/{r.json()['id']}", params={"view": "BASIC"}).json()
    assert t["executors"][0]["ignore_error"] is True


def test_cancel_shows_canceling_only_while_it_happens():
    r = bearer("/tasks", method="POST", json={"executors": [{"image": IMAGE, "command": ["sleep", "60"]}]})
    task_id = r.json()["id"]
    deadline = time.time() + 60
    while bearer(f"/tasks/{task_id}").json()["state"] != "RUNNING" and time.time() < deadline:
        time.sleep(0.2)
    before = bearer(f"/tasks/{task_id}").json()["state"]
    assert before == "RUNNING", before
    assert bearer(f"/tasks/{task_id}:cancel", method="POST").status_code == 200
    states, legacy = [], set()
    deadline = time.time() + 60
    while time.time() < deadline:
        states.append(bearer(f"/tasks/{task_id}").json()["state"])
        legacy.add(requests.get(f"{URL}/v1/tasks/{task_id}", auth=("x", TOKEN), timeout=30).json()["state"])
        if states[-1] == "CANCELED":
            break
    assert states[-1] == "CANCELED" and set(states) <= {"CANCELING", "CANCELED"}, states
    # Clients before 1.1 never see CANCELING (it did not exist for them).
    assert legacy <= {"RUNNING", "CANCELED"}, legacy


def test_py_tes_sends_basic_credentials():
    c = tes.HTTPClient(URL, user="any-name", password=TOKEN, timeout=30)
    task_id = c.create_task(tes.Task(name=f"basic-{RUN}", executors=[tes.Executor(image=IMAGE, command=["true"])]))
    assert c.wait(task_id, timeout=120).state == "COMPLETE"
    assert task_id in [t.id for t in c.list_tasks(view="MINIMAL", page_size=2048).tasks]
    # The same groups: another group's password sees a 404.
    o = tes.HTTPClient(URL, user="any-name", password=OTHER, timeout=30)
    try:
        o.get_task(task_id)
        raise AssertionError("another group read the task")
    except requests.HTTPError as e:
        assert e.response.status_code == 404
    # The same scopes and expiry: read-only lists but cannot create; expired is a 401.
    assert basic("/tasks", READONLY).status_code == 200
    r = basic("/tasks", READONLY, method="POST", json={"executors": [{"image": IMAGE, "command": ["true"]}]})
    assert r.status_code == 403, r.text
    r = basic("/tasks", EXPIRED)
    assert r.status_code == 401 and "expired" in r.json()["error"], r.text
    # Malformed or wrong credentials are a 401 that never echoes them.
    for header in ["Basic !!!", "Basic " + "dXNlcg==", "Basic"]:
        r = requests.get(API + "/tasks", headers={"Authorization": header}, timeout=30)
        assert r.status_code == 401, (header, r.text)
    r = basic("/tasks", TOKEN[:-4] + "ffff")
    assert r.status_code == 401 and TOKEN[-20:] not in r.text
    # The TES document declares the scheme.
    doc = requests.get(API + "/openapi.json", timeout=30).json()
    assert doc["components"]["securitySchemes"]["basicAuth"]["scheme"] == "basic"
    assert {"basicAuth": []} in doc["security"]
    # Only the TES routes take Basic credentials; /api/v1 keeps bearer tokens.
    r = requests.get(URL + "/api/v1/whoami", auth=("x", TOKEN), timeout=30)
    assert r.status_code == 401, r.text


def test_curl_with_netrc_and_a_url_user_part():
    host = urlsplit(URL)
    netrc = os.path.join(TMP, "netrc")
    with open(netrc, "w") as f:
        f.write(f"machine {host.hostname}\nlogin scientist\npassword {TOKEN}\n")
    os.chmod(netrc, 0o600)
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--netrc-file", netrc, f"{API}/tasks?view=MINIMAL&name_prefix=basic-{RUN}"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "basic-" not in out and '"tasks"' in out and '"state":"COMPLETE"' in out, out
    with open(netrc, "w") as f:
        f.write(f"machine {host.hostname}\nlogin scientist\npassword {OTHER}\n")
    out = subprocess.run(
        ["curl", "-sS", "--netrc-file", netrc, f"{API}/tasks?view=MINIMAL&name_prefix=basic-{RUN}"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert '"tasks":[]' in out, out
    url = f"{host.scheme}://me:{TOKEN}@{host.netloc}/ga4gh/tes/v1/tasks?view=MINIMAL&page_size=1"
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True)
    assert r.stdout == "200", r
    url = f"{host.scheme}://me:wrong@{host.netloc}/ga4gh/tes/v1/tasks"
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True)
    assert r.stdout == "401", r
