"""Check a caas job's ro-crate-metadata.json with readers independent of caas.

Usage: check_crate.py JOB_FOLDER

Reads the crate with PyPI's `rocrate` (the crate parses, it conforms to RO-Crate 1.1 and the
Process Run Crate profile, its actions name an instrument, inputs and results) and re-hashes
every File entity it names with `hashlib` (size and SHA-256, paths resolved from the @id
relative to the job folder). `runcrate report` (PyPI's `runcrate`) must read it too. Prints a
JSON summary on stdout; exits non-zero on the first disagreement.
"""

import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
import warnings

from rocrate.rocrate import ROCrate

PROFILE = "https://w3id.org/ro/wfrun/process/0.5"


def ids(value):
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    return [v.id if hasattr(v, "id") else v["@id"] if isinstance(v, dict) else v for v in value]


def main():
    folder = sys.argv[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crate = ROCrate(folder)
    root = crate.root_dataset
    assert PROFILE in ids(root.get("conformsTo")), root.get("conformsTo")
    assert crate.metadata.get("conformsTo") is not None
    files = []
    for e in crate.get_entities():
        if e.type != "File" or e.get("sha256") is None:
            continue
        path = os.path.normpath(os.path.join(folder, urllib.parse.unquote(e.id)))
        with open(path, "rb") as f:
            data = f.read()
        size = int(e["contentSize"])
        digest = hashlib.sha256(data).hexdigest()
        assert size == len(data), (e.id, size, len(data))
        assert digest == e["sha256"], (e.id, digest, e["sha256"])
        files.append(urllib.parse.unquote(e.id))
    actions = []
    for a in crate.get_entities():
        if a.type != "CreateAction":
            continue
        instrument = a.get("instrument")
        assert instrument is not None and instrument.type == "SoftwareApplication", a.id
        image = a.get("containerImage")
        actions.append({
            "id": a.id,
            "instrument": instrument.get("name"),
            "version": instrument.get("softwareVersion"),
            "spec_sha256": instrument.get("caas:specSha256"),
            "image": image.get("identifier") if image is not None else None,
            "objects": [urllib.parse.unquote(i) for i in ids(a.get("object"))],
            "results": [urllib.parse.unquote(i) for i in ids(a.get("result"))],
            "exit_code": a.get("exitCode"),
            "status": ids(a.get("actionStatus")),
            "command": a.get("caas:command"),
            "node": a.get("caas:node"),
            "executor": a.get("caas:executor"),
            "reused": a.get("caas:reusedResultsOf"),
            "start": a.get("startTime"),
            "end": a.get("endTime"),
        })
    caas = crate.get("#caas")
    report = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "runcrate"), "report", folder],
        capture_output=True, text=True, check=True,
    ).stdout
    print(json.dumps({
        "files": sorted(files),
        "actions": actions,
        "caas_version": caas.get("softwareVersion") if caas is not None else None,
        "report": report,
    }))


if __name__ == "__main__":
    main()
