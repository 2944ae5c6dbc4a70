"""A TES client from before 1.1, unchanged: py-tes 0.4.2 (what Snakemake's TES executor pins),
which speaks the `/v1/tasks` paths, sends HTTP Basic credentials (user, password) and parses
every answer strictly (an unknown field or state is an error).

Run by `crates/cli/tests/tes_compat.rs` with the Snakemake venv's Python (scripts/setup.sh),
given CAAS_TES_URL, CAAS_TOKEN (group lab), CAAS_OTHER_TOKEN (group other), CAAS_RUN. Prints
`legacy client: ok` when every check passed; any failure raises.
"""

import os
import sys
import time

import requests
import tes

URL = os.environ["CAAS_TES_URL"]
TOKEN = os.environ["CAAS_TOKEN"]
OTHER = os.environ["CAAS_OTHER_TOKEN"]
RUN = os.environ["CAAS_RUN"]
IMAGE = "local/busybox:test"

assert tes.__version__.startswith("0.4"), tes.__version__

# Any user name; the API token is the password.
client = tes.HTTPClient(URL, user="snakemake", password=TOKEN, timeout=30)
other = tes.HTTPClient(URL, user="", password=OTHER, timeout=30)

info = client.get_service_info()
assert info.name == "caas", info

task_id = client.create_task(
    tes.Task(
        name=f"legacy-{RUN}",
        inputs=[tes.Input(path="/in/hello.txt", content="hello\n")],
        outputs=[tes.Output(path="/out/copy.txt", url=f"caas://lab/inputs/legacy-{RUN}/copy.txt")],
        executors=[tes.Executor(image=IMAGE, command=["sh", "-c", "cat /in/hello.txt > /out/copy.txt; echo done"])],
        tags={"run": RUN},
    )
)
done = client.wait(task_id, timeout=120)
assert done.state == "COMPLETE", done
for view in ("MINIMAL", "BASIC", "FULL"):
    t = client.get_task(task_id, view)  # raises on any field or state 0.4.2 does not know
    assert t.id == task_id and t.state == "COMPLETE", (view, t)
full = client.get_task(task_id, "FULL")
assert full.logs[0].logs[0].exit_code == 0, full
assert "done" in full.logs[0].logs[0].stdout, full
assert full.inputs[0].content == "hello\n" and full.inputs[0].type == "FILE", full
assert full.logs[0].outputs and full.logs[0].outputs[0].path == "/out/copy.txt", full
basic = client.get_task(task_id, "BASIC")
assert basic.inputs[0].content is None, basic

listed = client.list_tasks(view="BASIC", page_size=2048)
assert task_id in [t.id for t in listed.tasks], listed
assert all(t.state is not None for t in listed.tasks)

# Cancel: while it is under way the state stays one 0.4.2 parses, then CANCELED.
slow = client.create_task(tes.Task(executors=[tes.Executor(image=IMAGE, command=["sleep", "60"])]))
deadline = time.time() + 60
while client.get_task(slow, "MINIMAL").state != "RUNNING" and time.time() < deadline:
    time.sleep(0.2)
client.cancel_task(slow)
seen = set()
deadline = time.time() + 60
while time.time() < deadline:
    s = client.get_task(slow, "FULL").state
    seen.add(s)
    if s == "CANCELED":
        break
    time.sleep(0.1)
assert "CANCELED" in seen and seen <= {"RUNNING", "CANCELED"}, seen

# Another group's token (Basic too) does not see the task; a wrong password is a 401.
try:
    other.get_task(task_id, "MINIMAL")
    raise AssertionError("another group's token read the task")
except requests.HTTPError as e:
    assert e.response.status_code == 404, e
assert task_id not in [t.id for t in other.list_tasks(view="MINIMAL").tasks]
wrong = tes.HTTPClient(URL, user="snakemake", password=TOKEN[:-1] + ("0" if TOKEN[-1] != "0" else "1"), timeout=30)
try:
    wrong.list_tasks()
    raise AssertionError("a wrong password was accepted")
except requests.HTTPError as e:
    assert e.response.status_code == 401, e

print("legacy client: ok", task_id, slow, sorted(seen))
sys.exit(0)
