"""GA4GH TES 1.1 against a real `caas serve --listen`, driven by the real `py-tes` client.

Run by `crates/cli/tests/tes.rs`, which starts the server (Docker executor, local store) and
passes CAAS_TES_URL, CAAS_TOKEN (user of group `lab`), CAAS_OTHER_TOKEN (user of group
`other`), CAAS_POOR_TOKEN (group `poor`, no budget left), CAAS_READONLY_TOKEN (ann, read-only), CAAS_STORE_DIR and CAAS_RUN (unique per run) in the environment.
"""

import os
import time

import pytest
import requests
import tes

URL = os.environ["CAAS_TES_URL"]
TOKEN = os.environ["CAAS_TOKEN"]
OTHER = os.environ["CAAS_OTHER_TOKEN"]
POOR = os.environ["CAAS_POOR_TOKEN"]
READONLY = os.environ["CAAS_READONLY_TOKEN"]
STORE = os.environ["CAAS_STORE_DIR"]
RUN = os.environ["CAAS_RUN"]
IMAGE = "local/busybox:test"
API = URL + "/ga4gh/tes/v1"

client = tes.HTTPClient(URL, token=TOKEN, timeout=30)
other = tes.HTTPClient(URL, token=OTHER, timeout=30)


def raw(method, path, token=TOKEN, **kw):
    return requests.request(
        method, API + path, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw
    )


def wait_state(task_id, states, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline:
        t = client.get_task(task_id, "MINIMAL")
        if t.state in states:
            return t
        time.sleep(0.3)
    raise AssertionError(f"task {task_id} never reached {states}: {t.state}")


def stored(key):
    with open(os.path.join(STORE, key), "rb") as f:
        return f.read()


def refused(task, status=400):
    with pytest.raises(requests.HTTPError) as e:
        client.create_task(task)
    assert e.value.response.status_code == status, e.value.response.text
    return e.value.response.json()["error"]


def test_service_info():
    si = client.get_service_info()
    assert si.type["artifact"] == "tes"
    assert si.type["version"].startswith("1.1")
    assert any(s.startswith("caas://") for s in si.storage)


def test_inputs_outputs_and_views():
    out = f"caas://lab/tes-out/{RUN}"
    task = tes.Task(
        name=f"wc-{RUN}",
        tags={"run": RUN},
        inputs=[
            tes.Input(path="/data/in.txt", url="caas://lab/inputs/lines.txt"),
            tes.Input(path="/data/inline.txt", content="hello from content\n"),
            tes.Input(path="/data/dir", url="caas://lab/inputs/folder", type="DIRECTORY"),
        ],
        outputs=[
            tes.Output(path="/data/out/count.txt", url=f"{out}/count.txt"),
            tes.Output(path="/data/out", url=f"{out}/dir", type="DIRECTORY"),
            tes.Output(path="/data/out/*.log", path_prefix="/data/out/", url=f"{out}/logs/"),
        ],
        executors=[
            tes.Executor(
                image=IMAGE,
                command=["sh", "-c", "mkdir -p /data/out && wc -l < /data/in.txt > /data/out/count.txt"],
            ),
            tes.Executor(
                image=IMAGE,
                command=["sh", "-c", 'cat /data/inline.txt; ls /data/dir; echo "$GREETING"; pwd; wc -l'],
                env={"GREETING": "it's $HOME {x}"},
                workdir="/data/work",
                stdin="/data/in.txt",
                stdout="/data/out/second.log",
            ),
        ],
    )
    task_id = client.create_task(task)
    assert task_id.startswith("tes-") and len(task_id) == 36
    done = client.wait(task_id, timeout=120)
    assert done.state == "COMPLETE", client.get_task(task_id, "FULL")

    full = client.get_task(task_id, "FULL")
    assert full.name == f"wc-{RUN}" and full.tags["run"] == RUN
    assert full.inputs[1].content == "hello from content\n"
    log = full.logs[0]
    assert log.start_time is not None and log.end_time is not None
    assert [e.exit_code for e in log.logs] == [0, 0]
    second = log.logs[1].stdout
    assert "hello from content" in second
    assert "a.txt" in second and "b.txt" in second
    assert "it's $HOME {x}" in second
    assert "/data/work" in second
    assert second.rstrip().endswith("3")  # wc -l of stdin
    assert any("caas job job__tes_" in s for s in log.system_logs)
    urls = sorted(o.url for o in log.outputs)
    assert f"{out}/count.txt" in urls
    assert f"{out}/logs/second.log" in urls
    assert f"{out}/dir/count.txt" in urls

    assert stored(f"lab/tes-out/{RUN}/count.txt").strip() == b"3"
    assert b"hello from content" in stored(f"lab/tes-out/{RUN}/dir/second.log")

    basic = client.get_task(task_id, "BASIC")
    assert basic.inputs[1].content is None
    assert basic.logs[0].logs[1].stdout is None and basic.logs[0].system_logs is None
    assert basic.executors[0].image == IMAGE

    minimal = client.get_task(task_id, "MINIMAL")
    assert minimal.state == "COMPLETE" and minimal.name is None and minimal.executors is None


def test_failure_ignore_error_and_exit_codes():
    ok = client.create_task(
        tes.Task(
            executors=[
                tes.Executor(image=IMAGE, command=["sh", "-c", "exit 3"], ignore_error=True),
                tes.Executor(image=IMAGE, command=["echo", "after"]),
            ]
        )
    )
    bad = client.create_task(
        tes.Task(
            executors=[
                tes.Executor(image=IMAGE, command=["sh", "-c", "echo oops >&2; exit 5"]),
                tes.Executor(image=IMAGE, command=["echo", "never"]),
            ]
        )
    )
    assert client.wait(ok, timeout=120).state == "COMPLETE"
    assert [e.exit_code for e in client.get_task(ok, "FULL").logs[0].logs] == [3, 0]
    assert client.wait(bad, timeout=120).state == "EXECUTOR_ERROR"
    logs = client.get_task(bad, "FULL").logs[0]
    assert [e.exit_code for e in logs.logs] == [5]
    assert "oops" in logs.logs[0].stderr


def test_refusals_name_the_field():
    ex = [tes.Executor(image=IMAGE, command=["true"])]
    assert "not allowed" in refused(tes.Task(executors=[tes.Executor(image="docker.io/evil/miner:latest", command=["x"])]))
    for url, needle in [
        ("file:///etc/passwd", "file://"),
        ("http://example.org/x", "http(s)"),
        ("caas://other/inputs/secret.txt", "outside your group"),
        ("caas://lab/../other/inputs/x", "not a usable path"),
        ("caas://lab/inputs/missing.txt", "does not exist"),
    ]:
        msg = refused(tes.Task(inputs=[tes.Input(name="ref", path="/in", url=url)], executors=ex))
        assert msg.startswith('input 0 ("ref")') and needle in msg, msg
    msg = refused(tes.Task(outputs=[tes.Output(path="/o", url="caas://lab/results/x")], executors=ex))
    assert "output 0" in msg
    msg = refused(tes.Task(executors=ex, resources=tes.Resources(cpu_cores=4096)))
    assert "cpu_cores" in msg
    msg = refused(tes.Task(executors=ex, resources=tes.Resources(backend_parameters={"gpus": "2"})))
    assert "gpus" in msg
    r = raw("POST", "/tasks", data=b"{not json")
    assert r.status_code == 400 and "error" in r.json()
    assert raw("GET", "/tasks", token="caas_bad").status_code == 401


def test_another_groups_token_sees_nothing():
    task_id = client.create_task(tes.Task(executors=[tes.Executor(image=IMAGE, command=["true"])]))
    for call in (lambda: other.get_task(task_id, "FULL"), lambda: other.cancel_task(task_id)):
        with pytest.raises(requests.HTTPError) as e:
            call()
        assert e.value.response.status_code == 404
    listed = other.list_tasks(view="MINIMAL", page_size=2048).tasks or []
    assert task_id not in [t.id for t in listed]
    assert raw("GET", "/tasks/tes-00000000000000000000000000000000").status_code == 404
    assert raw("GET", "/tasks/..%2F..%2Fetc").status_code == 404


def test_list_filters_and_pages():
    ids = []
    for i in range(5):
        ids.append(
            client.create_task(
                tes.Task(
                    name=f"page-{RUN}-{i}",
                    tags={"batch": RUN, "parity": "even" if i % 2 == 0 else "odd"},
                    executors=[tes.Executor(image=IMAGE, command=["true"])],
                )
            )
        )
    for t in ids:
        client.wait(t, timeout=120)
    seen, token = [], None
    while True:
        r = raw("GET", "/tasks", params={"name_prefix": f"page-{RUN}-", "page_size": 2, **({"page_token": token} if token else {})})
        assert r.status_code == 200
        body = r.json()
        assert len(body["tasks"]) <= 2
        seen += [t["id"] for t in body["tasks"]]
        token = body.get("next_page_token")
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    # Paging while new tasks (newer, same prefix) are created: the pages not read yet do not
    # shift, so nothing is listed twice and nothing is missed.
    seen, token, extra = [], None, []
    while True:
        r = raw("GET", "/tasks", params={"name_prefix": f"page-{RUN}-", "page_size": 2, **({"page_token": token} if token else {})})
        assert r.status_code == 200
        seen += [t["id"] for t in r.json()["tasks"]]
        extra.append(client.create_task(tes.Task(name=f"page-{RUN}-new{len(extra)}", executors=[tes.Executor(image=IMAGE, command=["sleep", "5"])])))
        token = r.json().get("next_page_token")
        if not token:
            break
    assert len(seen) == len(set(seen)) and sorted(seen) == sorted(ids), seen
    # A listed state follows the task (what the server remembers cannot go stale), and the
    # tasks created while paging list first, newest first.
    r = raw("GET", "/tasks", params={"name_prefix": f"page-{RUN}-new", "view": "MINIMAL"})
    assert [t["id"] for t in r.json()["tasks"]] == extra[::-1]
    assert all(t["state"] in ("QUEUED", "INITIALIZING", "RUNNING") for t in r.json()["tasks"]), r.json()
    for t in extra:
        client.wait(t, timeout=120)
    r = raw("GET", "/tasks", params={"name_prefix": f"page-{RUN}-new", "state": "COMPLETE"})
    assert sorted(t["id"] for t in r.json()["tasks"]) == sorted(extra)
    assert raw("GET", "/tasks", params={"page_token": "3"}).status_code == 400
    r = raw("GET", "/tasks", params={"tag_key": ["batch", "parity"], "tag_value": [RUN, "even"], "view": "BASIC"})
    got = r.json()["tasks"]
    assert sorted(t["id"] for t in got) == sorted(ids[0::2])
    assert all(t["tags"]["parity"] == "even" for t in got)
    r = raw("GET", "/tasks", params={"name_prefix": f"page-{RUN}-", "state": "COMPLETE"})
    assert len(r.json()["tasks"]) == 5 + len(extra)
    r = raw("GET", "/tasks", params={"name_prefix": f"page-{RUN}-", "state": "RUNNING"})
    assert r.json()["tasks"] == []
    assert raw("GET", "/tasks", params={"state": "DONE"}).status_code == 400
    assert raw("GET", "/tasks", params={"view": "ALL"}).status_code == 400
    assert raw("GET", "/tasks", params={"page_size": "0"}).status_code == 400
    listed = client.list_tasks(view="MINIMAL", page_size=2)
    assert len(listed.tasks) == 2 and listed.next_page_token


def test_cancel():
    task_id = client.create_task(tes.Task(executors=[tes.Executor(image=IMAGE, command=["sleep", "60"])]))
    wait_state(task_id, {"RUNNING"})
    client.cancel_task(task_id)
    assert wait_state(task_id, {"CANCELED"}, limit=60).state == "CANCELED"


def test_an_output_never_replaces_a_stored_file():
    before = stored("lab/inputs/lines.txt")
    task_id = client.create_task(
        tes.Task(
            outputs=[tes.Output(path="/o.txt", url="caas://lab/inputs/lines.txt")],
            executors=[tes.Executor(image=IMAGE, command=["sh", "-c", "echo replaced > /o.txt"])],
        )
    )
    assert client.wait(task_id, timeout=120).state == "COMPLETE"
    assert stored("lab/inputs/lines.txt") == before
    sys_logs = client.get_task(task_id, "FULL").logs[0].system_logs
    assert any("not replaced" in s for s in sys_logs), sys_logs


def test_the_served_openapi_document_declares_the_answers():
    from openapi_spec_validator import validate

    doc = requests.get(API + "/openapi.json", timeout=30).json()
    validate(doc)
    ops = doc["paths"]
    for path, methods in ops.items():
        for method, op in methods.items():
            if op.get("security", doc["security"]):
                assert "401" in op["responses"], (path, method)
    assert "404" in ops["/tasks/{id}"]["get"]["responses"]
    assert "400" in ops["/tasks"]["post"]["responses"]
    states = doc["components"]["schemas"]["tesState"]["enum"]
    assert client.get_task(client.list_tasks(page_size=1).tasks[0].id).state in states


def test_over_budget_is_refused_before_compute():
    poor = tes.HTTPClient(URL, token=POOR, timeout=30)
    with pytest.raises(requests.HTTPError) as e:
        poor.create_task(tes.Task(executors=[tes.Executor(image=IMAGE, command=["true"])]))
    assert e.value.response.status_code == 400
    assert "Over budget" in e.value.response.json()["error"]
    assert (poor.list_tasks(view="MINIMAL").tasks or [])[0].state == "SYSTEM_ERROR"


def test_hostile_bodies_names_and_tokens():
    body = '{"executors":[{"image":"%s","command":["true"]}],"description":"%s"}' % (IMAGE, "x" * (9 << 20))
    r = raw("POST", "/tasks", data=body.encode())
    assert r.status_code == 413 and "error" in r.json()
    r = raw("POST", "/tasks", token=READONLY, json={"executors": [{"image": IMAGE, "command": ["true"]}]})
    assert r.status_code == 403 and "read-only" in r.json()["error"]
    assert raw("GET", "/tasks", token=READONLY).status_code == 200
    name = "données 🧪 %2e%2e/..\nline" + "é" * 100
    tags = {"k\n🧪": "v%00~", "caas.note": "x" * 255}
    task_id = client.create_task(tes.Task(name=name, tags=tags, executors=[tes.Executor(image=IMAGE, command=["true"])]))
    got = client.get_task(task_id, "BASIC")
    assert got.name == name and got.tags == tags
    r = raw("GET", "/tasks", params={"name_prefix": "données 🧪", "view": "MINIMAL"})
    assert task_id in [t["id"] for t in r.json()["tasks"]]
    r = raw("GET", "/tasks", params={"tag_key": "k\n🧪", "tag_value": "v%00~"})
    assert [t["id"] for t in r.json()["tasks"]] == [task_id]
    for bad in ["tes-" + "0" * 31 + "g", "tes-%2e%2e%2f", "%00", "tes-" + "a" * 400]:
        assert raw("GET", "/tasks/" + bad).status_code == 404, bad
    assert raw("POST", "/tasks/" + task_id + ":pause").status_code == 404
