"""Pushing output folders, tested at the huggingface_hub boundary: `HfApi.create_repo` and `HfApi.create_commit`."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants

from helpers import tiny_base_sam, tiny_sam_processor, trained_icmoe
from hub_fixtures import BASE_REPO, EVAL_RESULTS, write_output_dir
from training.hub import check_hub_push, default_commit_message, plan_upload, push_output_dir, resolve_hub_token

TOKEN = "hf_test_token_never_shown_0123456789"
FULL_FILES = {
    "config.json",
    "model.safetensors",
    "configuration_icmoe_sam.py",
    "modeling_icmoe_sam.py",
    "experts.py",
    "layer.py",
    "router.py",
    "losses.py",
    "placement.py",
    "pipeline_icmoe_sam.py",
    "imaging.py",
    "processor_config.json",
    "eval_results.json",
    "train_log.jsonl",
    "figures/expert_load.png",
    "README.md",
}
ADAPTER_FILES = {
    "icmoe_adapter_config.json",
    "icmoe_adapter_model.safetensors",
    "eval_results.json",
    "figures/expert_load.png",
    "README.md",
}


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    model = trained_icmoe(tiny_base_sam(), steps=1, base_model_name_or_path=BASE_REPO)
    return write_output_dir(tmp_path_factory.mktemp("run"), model, tiny_sam_processor())


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No token anywhere: neither in the environment nor in a login file."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub_calls(monkeypatch, no_token):
    """Records the calls that would reach the Hub instead of making them."""
    calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", (repo_id,), kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        operations = list(operations)
        contents = {}
        for operation in operations:
            assert isinstance(operation, CommitOperationAdd)
            with operation.as_file() as f:
                contents[operation.path_in_repo] = f.read()
        calls.append(("create_commit", (repo_id, contents), kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "whoami", lambda self, token=None, **_: WHOAMI["hf_write_token"])
    return calls


def _expected_size(output_dir, path_in_repo: str, adapter_only: bool = False) -> int:
    source = output_dir / ("adapter/" + path_in_repo if adapter_only and "adapter_" in path_in_repo else path_in_repo)
    return source.stat().st_size


@pytest.mark.parametrize("private", [False, True])
def test_full_push(output_dir, hub_calls, private):
    uploads = push_output_dir(output_dir, "org/icmoe-sam", private=private, token=TOKEN, commit_message="First push")
    assert {u.path_in_repo for u in uploads} == FULL_FILES
    (name, args, kwargs), (commit_name, (repo_id, contents), commit_kwargs) = hub_calls
    assert name == "create_repo" and args == ("org/icmoe-sam",)
    assert kwargs == {"token": TOKEN, "private": private, "repo_type": "model", "exist_ok": True}
    assert commit_name == "create_commit" and repo_id == "org/icmoe-sam"
    assert commit_kwargs == {"commit_message": "First push", "token": TOKEN, "repo_type": "model"}
    assert set(contents) == FULL_FILES
    for upload in uploads:
        assert len(contents[upload.path_in_repo]) == upload.size
        if upload.path_in_repo != "README.md":
            assert upload.size == _expected_size(output_dir, upload.path_in_repo)
            assert contents[upload.path_in_repo] == (output_dir / upload.path_in_repo).read_bytes()
    card = ModelCard(contents["README.md"].decode())
    assert card.data.model_name == "icmoe-sam"
    assert 'AutoModel.from_pretrained("org/icmoe-sam", trust_remote_code=True)' in card.text


def test_full_push_with_adapter_folder(output_dir, hub_calls):
    uploads = push_output_dir(output_dir, "org/icmoe-sam", include_adapter=True, token=TOKEN)
    extra = {"adapter/icmoe_adapter_config.json", "adapter/icmoe_adapter_model.safetensors"}
    assert {u.path_in_repo for u in uploads} == FULL_FILES | extra
    assert not any(u.path_in_repo.startswith("checkpoints/") for u in uploads)


def test_adapter_only_push(output_dir, hub_calls):
    uploads = push_output_dir(output_dir, "org/icmoe-sam-adapter", adapter_only=True, token=TOKEN)
    assert {u.path_in_repo for u in uploads} == ADAPTER_FILES
    _, (_, (_, contents), commit_kwargs) = hub_calls
    assert set(contents) == ADAPTER_FILES
    assert (
        contents["icmoe_adapter_model.safetensors"]
        == (output_dir / "adapter" / "icmoe_adapter_model.safetensors").read_bytes()
    )
    for upload in uploads:
        if upload.path_in_repo != "README.md":
            assert upload.size == _expected_size(output_dir, upload.path_in_repo, adapter_only=True)
    card = ModelCard(contents["README.md"].decode())
    assert card.data.base_model == BASE_REPO
    assert f'load_icmoe_adapter("{BASE_REPO}", "org/icmoe-sam-adapter")' in card.text
    assert commit_kwargs["commit_message"] == "Upload IC-MoE adapter trained on org/tiny-polyps (Dice 0.8125 on test)"


def test_adapter_only_push_needs_hub_base(output_dir, tmp_path, hub_calls):
    folder = tmp_path / "local_base"
    folder.mkdir()
    (folder / "adapter").mkdir()
    for name in ("icmoe_adapter_config.json", "icmoe_adapter_model.safetensors"):
        (folder / "adapter" / name).write_bytes((output_dir / "adapter" / name).read_bytes())
    config = json.loads((folder / "adapter" / "icmoe_adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path)
    (folder / "adapter" / "icmoe_adapter_config.json").write_text(json.dumps(config))
    (folder / "eval_results.json").write_text(json.dumps({**EVAL_RESULTS, "base_model": str(tmp_path)}))
    with pytest.raises(ValueError, match="not a Hub id"):
        push_output_dir(folder, "org/x", adapter_only=True, token=TOKEN)
    assert hub_calls == []


def test_no_token_fails_before_any_call(output_dir, hub_calls):
    with pytest.raises(ValueError, match="needs a token"):
        check_hub_push("org/icmoe-sam")
    with pytest.raises(ValueError, match="needs a token"):
        push_output_dir(output_dir, "org/icmoe-sam")
    assert hub_calls == []


def test_token_from_environment_and_login_file(monkeypatch, no_token, tmp_path, output_dir, hub_calls, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert check_hub_push("org/icmoe-sam") == TOKEN
    push_output_dir(output_dir, "org/icmoe-sam")
    assert hub_calls[0][2]["token"] == TOKEN and hub_calls[1][2]["token"] == TOKEN
    assert TOKEN not in capsys.readouterr().out
    monkeypatch.delenv("HF_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text("hf_from_login_file")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    assert resolve_hub_token() == "hf_from_login_file"


def test_offline_mode_refuses_to_push(monkeypatch, no_token):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        resolve_hub_token(TOKEN)


def test_dry_run_uploads_nothing(output_dir, hub_calls, capsys):
    uploads = push_output_dir(output_dir, "org/icmoe-sam", dry_run=True)  # no token needed to look
    assert hub_calls == []
    out = capsys.readouterr().out
    assert {u.path_in_repo for u in uploads} == FULL_FILES
    for upload in uploads:
        assert upload.path_in_repo in out and f"{upload.size:,} bytes" in out
    assert "Commit message: Upload IC-MoE SAM checkpoint trained on org/tiny-polyps (Dice 0.8125 on test)" in out
    assert "checkpoints" not in out


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"repo_id": "no-namespace"}, "namespace/name"),
        ({"repo_id": "org/x", "adapter_only": True, "include_adapter": True}, "include_adapter"),
    ],
)
def test_argument_errors(output_dir, hub_calls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        push_output_dir(output_dir, token=TOKEN, **kwargs)
    assert hub_calls == []


def test_plan_needs_a_checkpoint(tmp_path):
    (tmp_path / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    with pytest.raises(ValueError, match="no full checkpoint"):
        plan_upload(tmp_path)
    with pytest.raises(ValueError, match="no adapter-only checkpoint"):
        plan_upload(tmp_path, adapter_only=True)


def test_commit_message_names_local_data_by_its_folder(output_dir, tmp_path):
    results = json.loads((output_dir / "eval_results.json").read_text())
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "eval_results.json").write_text(json.dumps({**results, "dataset": str(tmp_path / "scans" / "kvasir")}))
    message = default_commit_message(folder)
    assert "trained on kvasir (" in message and str(tmp_path) not in message


# ----------------------------------------------------------------------------------- the token checked with the Hub
def _whoami(role: str, *, scoped: list | None = None) -> dict:
    access = {"displayName": f"{role}-token", "role": role}
    if scoped is not None:
        access["fineGrained"] = {"global": [], "scoped": scoped}
    orgs = [{"name": "org", "roleInOrg": "write"}, {"name": "readers", "roleInOrg": "read"}]
    return {"type": "user", "name": "alice", "orgs": orgs, "auth": {"type": "access_token", "accessToken": access}}


WHOAMI = {
    "hf_write_token": _whoami("write"),
    "hf_read_token": _whoami("read"),
    "hf_fine_org_write": _whoami("fineGrained", scoped=[
        {"entity": {"type": "org", "name": "org"}, "permissions": ["repo.content.read", "repo.write"]}]),
    "hf_fine_org_read": _whoami("fineGrained", scoped=[
        {"entity": {"type": "org", "name": "org"}, "permissions": ["repo.content.read"]}]),
}


@pytest.fixture
def whoami_server(monkeypatch, no_token):
    """A real HTTP server answering `/api/whoami-v2` as the Hub does, by the bearer token; the Hub endpoint points
    at it."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            known = self.path == "/api/whoami-v2" and token in WHOAMI
            body = json.dumps(WHOAMI[token] if known else {"error": "Invalid credentials in Authorization header"})
            self.send_response(200 if known else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("token, repo_id", [
    ("hf_write_token", "org/icmoe-sam"), ("hf_write_token", "alice/icmoe-sam"), ("hf_fine_org_write", "org/icmoe-sam"),
])
def test_token_that_can_write_passes(whoami_server, token, repo_id):
    assert check_hub_push(repo_id, token) == token


@pytest.mark.parametrize("token, repo_id, match", [
    ("hf_wrong_token", "org/icmoe-sam", r"rejected the token \(HTTP 401\)"),
    ("hf_read_token", "org/icmoe-sam", "is read-only"),
    ("hf_write_token", "elsewhere/icmoe-sam", "'alice' is not a member of it"),
    ("hf_write_token", "readers/icmoe-sam", "has the read role in 'readers'"),
    ("hf_fine_org_read", "org/icmoe-sam", "without the 'repo.write' permission"),
    ("hf_fine_org_write", "alice/icmoe-sam", "without the 'repo.write' permission"),
])
def test_token_that_cannot_write_fails_before_training(whoami_server, token, repo_id, match):
    with pytest.raises(ValueError, match=match) as error:
        check_hub_push(repo_id, token)
    assert token not in str(error.value)


def test_unreachable_hub_is_a_clear_error(monkeypatch, no_token):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ValueError, match="Could not reach the Hub"):
        check_hub_push("org/icmoe-sam", "hf_write_token")
