"""Offline push/pull through the real huggingface_hub / transformers clients against ``LocalHub``."""

from __future__ import annotations

import json
import textwrap

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

try:
    from hub_server import ExternalRequestBlocked, LocalHub, git_blob_sha1, local_hub  # noqa: F401 (fixture)
except ImportError:  # ``tests`` imported as a package
    from tests.hub_server import ExternalRequestBlocked, LocalHub, git_blob_sha1, local_hub  # noqa: F401

BINARY = bytes(range(256)) * 3 + b"\x00\xff"


def _make_folder(root):
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"hidden_size": 16}))
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    (root / "sub" / "notes.txt").write_text("héllo wörld\n", encoding="utf-8")
    (root / "sub" / "weights.bin").write_bytes(BINARY)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_upload_folder_then_snapshot_download_into_fresh_cache(local_hub, tmp_path):
    api = HfApi()
    assert api.whoami()["name"] == local_hub.user
    repo_url = api.create_repo("org/demo")
    assert repo_url.repo_id == "org/demo" and repo_url.endpoint == local_hub.endpoint
    api.create_repo("org/demo", exist_ok=True)  # idempotent
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("org/demo")
    assert err.value.response.status_code == 409

    expected = _make_folder(tmp_path / "src")
    api.upload_folder(repo_id="org/demo", folder_path=tmp_path / "src", commit_message="add files")

    assert local_hub.files("org/demo") == {".gitattributes": local_hub.files("org/demo")[".gitattributes"], **expected}
    local = snapshot_download("org/demo", cache_dir=tmp_path / "fresh-cache")
    downloaded = {p: (tmp_path / "fresh-cache").joinpath(local, p).read_bytes() for p in expected}
    assert downloaded == expected
    assert {p for p in api.list_repo_files("org/demo")} == {".gitattributes", *expected}
    assert local_hub.unknown_requests == local_hub.blocked_requests == local_hub.server_errors == []
    methods = {m for m, _ in local_hub.requests}
    assert {"POST", "GET", "HEAD"} <= methods


def test_second_commit_changes_and_deletes_and_history_keeps_both(local_hub, tmp_path):
    api = HfApi()
    api.create_repo("org/hist")
    first_files = _make_folder(tmp_path / "src")
    first = api.upload_folder(repo_id="org/hist", folder_path=tmp_path / "src", commit_message="v1")
    second = api.create_commit(
        "org/hist",
        operations=[
            CommitOperationAdd("config.json", b'{"hidden_size": 32}'),
            CommitOperationDelete("sub/weights.bin"),
        ],
        commit_message="v2",
        commit_description="bigger, no weights",
    )

    history = local_hub.commits("org/hist")
    assert [c["title"] for c in history] == ["initial commit", "v1", "v2"]
    assert [c["oid"] for c in history[1:]] == [first.oid, second.oid]
    assert history[2]["parent"] == first.oid and history[2]["message"] == "bigger, no weights"
    assert history[2]["added"] == ["config.json"] and history[2]["deleted"] == ["sub/weights.bin"]
    assert history[1]["files"]["sub/weights.bin"] == BINARY  # each commit keeps its whole tree
    assert "sub/weights.bin" not in local_hub.files("org/hist")
    assert [c.commit_id for c in api.list_repo_commits("org/hist")] == [c["oid"] for c in reversed(history)]

    # Both revisions stay downloadable.
    old = hf_hub_download("org/hist", "config.json", revision=first.oid, cache_dir=tmp_path / "c")
    new = hf_hub_download("org/hist", "config.json", cache_dir=tmp_path / "c")
    assert open(old, "rb").read() == first_files["config.json"]
    assert open(new, "rb").read() == b'{"hidden_size": 32}'
    snapshot = snapshot_download("org/hist", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").joinpath(snapshot, "sub", "weights.bin").exists()


def test_unchanged_files_are_skipped_like_on_the_hub(local_hub, tmp_path):
    api = HfApi()
    api.create_repo("org/same")
    _make_folder(tmp_path / "src")
    first = api.upload_folder(repo_id="org/same", folder_path=tmp_path / "src")
    again = api.upload_folder(repo_id="org/same", folder_path=tmp_path / "src")  # preupload returns the oids
    assert again.oid == first.oid and len(local_hub.commits("org/same")) == 2


def test_hf_hub_download_one_file_with_hub_headers(local_hub, tmp_path):
    api = HfApi()
    api.create_repo("org/one")
    info = api.upload_file(path_or_fileobj=BINARY, path_in_repo="blob.bin", repo_id="org/one")

    path = hf_hub_download("org/one", "blob.bin", cache_dir=tmp_path / "cache")
    assert open(path, "rb").read() == BINARY
    meta = get_hf_file_metadata(hf_hub_url("org/one", "blob.bin"))
    assert (meta.commit_hash, meta.etag, meta.size) == (info.oid, git_blob_sha1(BINARY), len(BINARY))

    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/one", "missing.txt", cache_dir=tmp_path / "cache")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nope", "blob.bin", cache_dir=tmp_path / "cache")


def test_writes_need_the_token_and_other_hosts_are_blocked(local_hub):
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong").create_repo("org/denied")
    assert err.value.response.status_code == 401 and local_hub.repo_ids() == []

    with pytest.raises(ExternalRequestBlocked):
        HfApi(endpoint="https://huggingface.co").model_info("gpt2")
    assert local_hub.blocked_requests == ["https://huggingface.co/api/models/gpt2"]

    with pytest.raises(HfHubHTTPError):  # not implemented: answered 404 and recorded, not silent
        list(HfApi().list_models())
    assert local_hub.unknown_requests == [("GET", "/api/models")]


def test_subprocess_uses_hf_endpoint_and_cannot_reach_huggingface_co(tmp_path):
    code = textwrap.dedent(
        """
        import huggingface_hub, httpx2
        from huggingface_hub import HfApi, hf_hub_download
        assert huggingface_hub.constants.ENDPOINT.startswith("http://127.0.0.1:")
        HfApi().create_repo("org/sub")
        HfApi().upload_file(path_or_fileobj=b"from a subprocess", path_in_repo="x.txt", repo_id="org/sub")
        assert open(hf_hub_download("org/sub", "x.txt"), "rb").read() == b"from a subprocess"
        try:
            HfApi(endpoint="https://huggingface.co").model_info("gpt2")
        except httpx2.ProxyError:
            print("blocked")
        """
    )
    with LocalHub(hf_home=tmp_path / "hf_home") as hub:
        assert hub.run_python(code).stdout.strip() == "blocked"
        assert hub.files("org/sub")["x.txt"] == b"from a subprocess"
        assert hub.blocked_requests == ["huggingface.co:443"] and hub.unknown_requests == hub.server_errors == []
    assert (tmp_path / "hf_home" / "hub" / "models--org--sub").is_dir()  # the subprocess cache


def test_transformers_push_to_hub_and_from_pretrained_in_a_subprocess(tmp_path):
    code = textwrap.dedent(
        """
        import tempfile, torch
        from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, vocab_size=64)
        model = LlamaForCausalLM(config)
        model.push_to_hub("org/tiny")
        loaded = AutoModelForCausalLM.from_pretrained("org/tiny", cache_dir=tempfile.mkdtemp())
        assert type(loaded) is LlamaForCausalLM and loaded.config.hidden_size == 16
        expected, got = model.state_dict(), loaded.state_dict()
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected)
        print("weights equal:", len(expected))
        """
    )
    with LocalHub(hf_home=tmp_path / "hf_home") as hub:
        out = hub.run_python(code).stdout
        assert "weights equal:" in out
        files = hub.files("org/tiny")
        assert {"config.json", "model.safetensors", "README.md"} <= set(files)
        assert json.loads(files["config.json"])["num_hidden_layers"] == 2
        downloaded = {path.rsplit("/", 1)[-1] for method, path in hub.requests
                      if method == "GET" and "/resolve/" in path}
        assert {"config.json", "model.safetensors"} <= downloaded
        assert hub.blocked_requests == hub.unknown_requests == hub.server_errors == []
