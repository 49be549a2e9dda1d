"""The Python client as a user gets it: the wheel installed into a fresh environment outside
the checkout, calling the real search root, shards and Triton (the `cluster` of
test_serving_search): typed results for a query by pool id, by file path and by bytes, the
index status, and each failure as the exception its gRPC status names."""

from __future__ import annotations

import json

import pytest

from runtime import auth
from tests.serving.serving_support import PHOTOS, photo, png
from tests.serving.test_serving_search import N_PER_PHOTO, cluster, corpus  # noqa: F401
from tests.support.package import InstalledWheel, install_wheel
from tests.support.processes import free_port

SCRIPT = r"""
import json, sys
from pathlib import Path
from magiclens_client import (MagicLensClient, MagicLensError, SearchHit, SearchResult,
                              IndexStatus)

addr, token, image_id, photo, dead = sys.argv[1:6]
out, errors = {}, {}

def failure(call):
    try:
        call()
    except MagicLensError as exc:
        return [type(exc).__name__, exc.code, str(exc)]
    return None

with MagicLensClient(addr, token=token) as ml:
    results = {"by_id": ml.search(image=int(image_id), instruction="the same thing", k=5),
               "by_path": ml.search(image=photo, instruction="find the same cup", k=5),
               "by_bytes": ml.search(image=Path(photo).read_bytes(), k=3)}
    for name, r in results.items():
        assert isinstance(r, SearchResult), type(r)
        assert all(isinstance(h, SearchHit) and isinstance(h.score, float) for h in r.hits)
        out[name] = r.to_dict()
    st = ml.index_status()
    assert isinstance(st, IndexStatus)
    out["status"] = st.to_dict()
    errors["not_found"] = failure(lambda: ml.search(image=2**62))
    errors["bad_image"] = failure(lambda: ml.search(image=b"GIF89a-garbage"))
    errors["bad_k"] = failure(lambda: ml.search(image=int(image_id), k=101))
    errors["no_file"] = failure(lambda: ml.search(image="/no/such/query.png"))
with MagicLensClient(addr, token="not-a-token") as ml:
    errors["bad_token"] = failure(lambda: ml.search(image=int(image_id)))
with MagicLensClient(dead, token=token, timeout=3) as ml:
    errors["down"] = failure(lambda: ml.search(image=int(image_id)))
out["errors"] = errors
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> InstalledWheel:
    return install_wheel(tmp_path_factory.mktemp("wheel"))


def test_installed_client_searches_the_real_stack(cluster, installed):  # noqa: F811
    qid = cluster.image_ids[0]
    query = installed.home / "coffee.png"
    query.write_bytes(png(photo("coffee")))
    dead = f"127.0.0.1:{free_port()}"
    res = installed.run(installed.python, "-c", SCRIPT, cluster.root_addr,
                        auth.client_token(auth.READ), str(qid), str(query), dead, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)

    by_id = out["by_id"]
    assert by_id["model_version"] == "serving-a" and not by_id["partial"]
    ids = [h["image_id"] for h in by_id["hits"]]
    assert 1 <= len(ids) <= 5 and qid not in ids  # the query image is left out
    scores = [h["score"] for h in by_id["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert by_id["hits"][0]["page_title"] == "Test photos"
    # a file path and its bytes: the nearest are the augmentations of the same photo
    coffee = PHOTOS.index("coffee")
    coffee_ids = set(cluster.image_ids[coffee * N_PER_PHOTO:(coffee + 1) * N_PER_PHOTO])
    assert len(coffee_ids & {h["image_id"] for h in out["by_path"]["hits"]}) >= 3, out
    assert len(out["by_bytes"]["hits"]) == 3
    st = out["status"]
    assert st["shards"] == st["shards_up"] == 2 and st["num_vectors"] >= len(cluster.image_ids)
    assert st["model_version"] == "serving-a"

    errors = out["errors"]
    assert errors["not_found"][:2] == ["NotFound", "NOT_FOUND"]
    assert errors["bad_image"][:2] == ["InvalidRequest", "INVALID_ARGUMENT"]
    assert errors["bad_k"][:2] == ["InvalidRequest", "INVALID_ARGUMENT"]  # refused before sending
    assert "k must be between 1 and 100" in errors["bad_k"][2]
    assert errors["no_file"][0] == "InvalidRequest" and "no such file" in errors["no_file"][2]
    assert errors["bad_token"][:2] == ["Unauthenticated", "UNAUTHENTICATED"]
    assert errors["down"][:2] == ["Unavailable", "UNAVAILABLE"]
    assert errors["down"][2].startswith(f"search service at {dead} is unavailable")
