"""The Python package against a real caas server: a notebook session (upload with progress,
submit, logs followed live, wait, results download, cost), a resumable upload interrupted and
resumed, cancel, errors with the server's message, and the types checked against the
server's OpenAPI document."""

import httpx
import pytest

import caas
from caas.types import SCHEMAS


def test_types_match_the_servers_openapi(client):
    doc = httpx.get(client.server + "/api/v1/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name, td in SCHEMAS.items():
        assert set(td.__annotations__) == set(schemas[name]["properties"]), name


def test_a_notebook_session(client, run_id, tmp_path):
    data = tmp_path / "rec.csv"
    data.write_text("1\n2\n3\n4\n")
    seen = []
    up = client.upload(data, name=f"rec-{run_id}.csv", progress=lambda d, t, s: seen.append((d, t)))
    assert up == {"name": f"rec-{run_id}.csv", "size": 8, "created": True}
    assert seen and seen[-1] == (8, 8)
    again = client.upload(data, name=f"rec-{run_id}.csv", progress=False)
    assert again["created"] is False
    cfg = tmp_path / "quick.yaml"
    cfg.write_text("0\n")
    client.upload(cfg, name=f"quick-{run_id}.yaml", kind="configs", progress=False)
    assert f"quick-{run_id}.yaml" in [c["name"] for c in client.configs()]

    job = client.submit(data=f"rec-{run_id}.csv", config=f"quick-{run_id}.yaml", timestamp=f"py-{run_id}")
    assert job.name.endswith(f"_py-{run_id}")
    followed = "".join(job.logs(follow=True))
    assert "line 1\nline 2\nline 3" in followed, followed
    states = []
    job.wait(timeout=120, progress=lambda d, t, s: states.append(s))
    assert job.ok, job.view
    assert states[-1] == "succeeded"
    assert "line 3" in "".join(job.logs())
    files = job.results.download(tmp_path / "out", progress=False)
    names = {f.name for f in files}
    assert "lines.txt" in names, names
    assert (tmp_path / "out" / "process_results" / "lines.txt").read_text().strip() == "4"
    assert job.results.read("process_results/lines.txt").strip() == b"4"
    assert "SUCCESS" in job.certificate() or "succeeded" in job.certificate()
    cost = client.cost()
    assert cost["group"] == client.group and cost["tasks"] >= 1
    assert any(j.name == job.name for j in client.jobs())


def test_a_resumable_upload_goes_on_where_it_stopped(client, run_id, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    big = tmp_path / "big.bin"
    payload = bytes(range(256)) * (4 * 4096 + 7)  # ~4 MiB, 3 parts of 1.5 MiB
    big.write_bytes(payload)
    part = 3 << 19
    calls = []

    def stop_after_first_part(done, total, text):
        calls.append(done)
        if done >= part:
            raise KeyboardInterrupt("the notebook was interrupted")

    with pytest.raises(KeyboardInterrupt):
        client.upload(big, name=f"big-{run_id}.bin", part_size=part, progress=stop_after_first_part)
    assert f"big-{run_id}.bin" not in [i["name"] for i in client.inputs()]
    resumed = []
    up = client.upload(big, name=f"big-{run_id}.bin", part_size=part, progress=lambda d, t, s: resumed.append(d))
    assert up["created"] is True and up["size"] == len(payload)
    assert resumed[0] >= part, f"resumed from {resumed[0]}, not from what the server had"
    listed = {i["name"]: i["size"] for i in client.inputs()}
    assert listed[f"big-{run_id}.bin"] == len(payload)


def test_cancel(client, run_id, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x\n")
    client.upload(data, name=f"slow-{run_id}.csv", progress=False)
    cfg = tmp_path / "slow.yaml"
    cfg.write_text("60\n")
    client.upload(cfg, name=f"slow-{run_id}.yaml", kind="configs", progress=False)
    job = client.submit(data=[f"slow-{run_id}.csv"], config=f"slow-{run_id}.yaml")
    for _ in job.logs(follow=True):
        break  # it runs
    job.cancel()
    job.wait(timeout=90, progress=False)
    assert job.state == "cancelled", job.view


def test_errors_carry_the_servers_message(client, other, run_id, tmp_path):
    f = tmp_path / "rec.csv"
    f.write_text("different\n")
    with pytest.raises(caas.CaasError) as e:
        client.upload(f, name=f"rec-{run_id}.csv", progress=False)
    assert e.value.status == 409 and "never replace" in e.value.message
    with pytest.raises(caas.CaasError) as e:
        client.submit(data="missing.csv", config=f"quick-{run_id}.yaml")
    assert e.value.status == 422 and "missing.csv" in e.value.message
    with pytest.raises(caas.CaasError) as e:
        other.job(f"py-{run_id}")
    assert e.value.status == 404
    with pytest.raises(caas.CaasError) as e:
        caas.Client(client.server, "caas_000000000000_" + "0" * 64).whoami()
    assert e.value.status == 401 and "token" in e.value.message
    with pytest.raises(caas.CaasError) as e:
        caas.Client("http://127.0.0.1:9", "t").whoami()
    assert e.value.status == 0 and "cannot be reached" in e.value.message
