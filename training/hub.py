"""Pushing a training output folder to the Hugging Face Hub: the full checkpoint, or the adapter only.

`training/run.py` calls `check_hub_push` before training (a missing, invalid or read-only token or a malformed repo
id fails then, not after hours of training) and `push_output_dir` at the end. The upload is one commit of an explicit file list: the
Accelerate states in `checkpoints/` never leave the machine, and the model card is rendered for the repository it
goes to (with its id in the loading code).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from hub_cards import is_hub_repo_id, public_name, read_eval_results, render_model_card
from modeling_icmoe import run_folder

# The root files of a full checkpoint that belong on the Hub. Anything else at the root (stray logs, scratch files)
# stays local unless named here.
CHECKPOINT_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    "processor_config.json",
    run_folder.EVAL_RESULTS_NAME,
    run_folder.TRAIN_LOG_NAME,
)
SHARD_PATTERN = "model-*-of-*.safetensors"
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
__getattr__ = run_folder.moved_names(__name__, {
    name: name for name in ("ADAPTER_SUBFOLDER", "ADAPTER_FILES", "FIGURES_SUBFOLDER", "CARD_NAME")
})


@dataclass(frozen=True)
class HubUpload:
    """One file of a push: where it goes in the repository, its size in bytes, and its local source.

    `source` is `None` for the model card, which is rendered at push time and uploaded from memory.
    """

    path_in_repo: str
    size: int
    source: Path | None


def resolve_hub_token(token: str | None = None) -> str:
    """The token to push with: `token` if given, else `HF_TOKEN` or the `hf auth login` token file.

    Raises:
        ValueError: when there is none, or when `HF_HUB_OFFLINE` forbids talking to the Hub. The message never
            contains the token.
    """
    if constants.HF_HUB_OFFLINE:
        raise ValueError("Pushing to the Hub is impossible with HF_HUB_OFFLINE=1 set; unset it or do not push.")
    token = token or get_token()
    if not token:
        raise ValueError(
            "Pushing to the Hub needs a token with write access: set the HF_TOKEN environment variable, run "
            "`hf auth login`, or pass the token explicitly."
        )
    return token


def check_hub_push(repo_id: str, token: str | None = None) -> str:
    """Checks, before training, that a push to `repo_id` can happen; returns the token to give `push_output_dir`.

    The Hub is asked who the token belongs to (`whoami`): an invalid or expired token, a read-only one, one of an
    account that is not a member of the repository's namespace (or only with the `read` role), and a fine-grained
    token without `repo.write` there all fail here, before training, with what to change. No message holds the token.
    """
    if not is_hub_repo_id(repo_id):
        raise ValueError(
            f"`repo_id` must look like 'namespace/name' (e.g. 'my-org/icmoe-sam-kvasir'), got {repo_id!r}."
        )
    token = resolve_hub_token(token)
    check_write_access(repo_id, _whoami(token))
    return token


def _whoami(token: str) -> dict:
    try:
        return HfApi().whoami(token=token)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise ValueError(
                f"The Hub ({constants.ENDPOINT}) rejected the token (HTTP 401): it is invalid, expired or revoked. "
                "Create a token with write access at https://huggingface.co/settings/tokens."
            ) from None
        raise ValueError(f"Could not check the token with the Hub ({constants.ENDPOINT}): HTTP {status}.") from None
    except Exception as error:  # connection refused, DNS, timeouts: the HTTP client's own exception types
        raise ValueError(
            f"Could not reach the Hub ({constants.ENDPOINT}) to check the token: {type(error).__name__}: {error}"
        ) from None


def check_write_access(repo_id: str, whoami: dict) -> None:
    """Raises unless the account and token described by `whoami` (the Hub's `whoami-v2` answer) can write `repo_id`."""
    namespace = repo_id.split("/")[0]
    user = whoami.get("name")
    access = (whoami.get("auth") or {}).get("accessToken") or {}
    role, label = access.get("role"), f"The token '{access.get('displayName', '?')}' of '{user}'"
    if role == "read":
        raise ValueError(f"{label} is read-only; pushing to {repo_id} needs a token with write access.")
    org_roles = {org.get("name"): org.get("roleInOrg") for org in whoami.get("orgs") or []}
    if namespace != user:
        if namespace not in org_roles:
            raise ValueError(
                f"{label} cannot create repositories in '{namespace}': '{user}' is not a member of it "
                f"(member of: {sorted(org_roles) or 'no organization'})."
            )
        if org_roles[namespace] == "read":
            raise ValueError(f"'{user}' has the read role in '{namespace}'; pushing to {repo_id} needs write access.")
    if role == "fineGrained":
        scoped = ((access.get("fineGrained") or {}).get("scoped")) or []
        writable = {
            (scope.get("entity") or {}).get("name") for scope in scoped if "repo.write" in (scope.get("permissions") or [])
        }
        if namespace not in writable and repo_id not in writable:
            raise ValueError(
                f"{label} is fine-grained without the 'repo.write' permission on '{namespace}' or {repo_id}; add it "
                "at https://huggingface.co/settings/tokens."
            )


def _file(output_dir: Path, relative: str, path_in_repo: str | None = None) -> HubUpload:
    source = output_dir / relative
    return HubUpload(path_in_repo=path_in_repo or relative, size=source.stat().st_size, source=source)


def _figures(output_dir: Path) -> list[HubUpload]:
    folder = output_dir / run_folder.FIGURES_SUBFOLDER
    if not folder.is_dir():
        return []
    return [
        _file(output_dir, f"{run_folder.FIGURES_SUBFOLDER}/{path.name}")
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix.lower() in FIGURE_SUFFIXES
    ]


def _adapter_files(output_dir: Path, *, at_root: bool) -> list[HubUpload]:
    subfolder, names = run_folder.ADAPTER_SUBFOLDER, run_folder.ADAPTER_FILES
    missing = [name for name in names if not (output_dir / subfolder / name).is_file()]
    if missing:
        raise ValueError(f"{output_dir / subfolder} lacks {missing}: there is no adapter-only checkpoint.")
    return [_file(output_dir, f"{subfolder}/{name}", name if at_root else None) for name in names]


def plan_upload(
    output_dir: str | os.PathLike, *, adapter_only: bool = False, include_adapter: bool = False
) -> list[HubUpload]:
    """The files a push of `output_dir` uploads, without the model card (see `push_output_dir`).

    Full checkpoint: `config.json`, the weights, the code files, the processor files, `eval_results.json`,
    `train_log.jsonl` and `figures/`; `adapter/` too when `include_adapter`. Adapter only: the two adapter files at
    the repository root (where `load_icmoe_adapter` looks for them), `eval_results.json` and `figures/`.
    `checkpoints/` is never part of a push.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ValueError(f"{output_dir} is not a folder.")
    if adapter_only and include_adapter:
        raise ValueError("`include_adapter` adds adapter/ to a full push; an adapter-only push already holds it.")
    if adapter_only:
        files = _adapter_files(output_dir, at_root=True)
        if (output_dir / run_folder.EVAL_RESULTS_NAME).is_file():
            files.append(_file(output_dir, run_folder.EVAL_RESULTS_NAME))
        return files + _figures(output_dir)

    has_weights = (output_dir / "model.safetensors").is_file() or any(output_dir.glob(SHARD_PATTERN))
    if not (output_dir / "config.json").is_file() or not has_weights:
        raise ValueError(
            f"{output_dir} holds no full checkpoint (config.json and model.safetensors); push the adapter only with "
            "`adapter_only=True`, or save the model first."
        )
    root = sorted(
        path.name
        for path in output_dir.iterdir()
        if path.is_file() and (path.name in CHECKPOINT_FILES or path.suffix == ".py" or path.match(SHARD_PATTERN))
    )
    files = [_file(output_dir, name) for name in root] + _figures(output_dir)
    if include_adapter:
        files += _adapter_files(output_dir, at_root=False)
    return files


def default_commit_message(output_dir: str | os.PathLike, *, adapter_only: bool = False) -> str:
    results = read_eval_results(output_dir)
    what = "IC-MoE adapter" if adapter_only else "IC-MoE SAM checkpoint"
    if results["method"] != "icmoe":
        what = f"{results['method']} {'adapter' if adapter_only else 'checkpoint'}"
    dice = results["dice"]
    score = f"Dice {dice:.4f}" if isinstance(dice, (int, float)) else "Dice n/a"
    return f"Upload {what} trained on {public_name(str(results['dataset']))} ({score} on {results['eval_split']})"


def push_output_dir(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    adapter_only: bool = False,
    include_adapter: bool = False,
    token: str | None = None,
    dry_run: bool = False,
    commit_message: str | None = None,
    license: str = "apache-2.0",
) -> list[HubUpload]:
    """Uploads a training output folder to the Hub model repository `repo_id`, in one commit.

    Args:
        output_dir: the folder `training/run.py` wrote.
        repo_id: `namespace/name` of the model repository; created if missing.
        private: create the repository as private (an existing repository keeps its visibility).
        adapter_only: upload the adapter-only checkpoint and its card instead of the full checkpoint; the card names
            the base model, which must then be a Hub id.
        include_adapter: with a full push, upload `adapter/` as well.
        token: a write token; defaults to `HF_TOKEN` or the `hf auth login` token.
        dry_run: print the files (path in the repository, size) and the commit message, and upload nothing.
        commit_message: defaults to a message naming the dataset and the Dice score.
        license: license identifier written in the card.

    Returns:
        The uploaded files (or, with `dry_run`, those that would be), the model card `README.md` included.
    """
    if not is_hub_repo_id(repo_id):
        raise ValueError(f"`repo_id` must look like 'namespace/name', got {repo_id!r}.")
    output_dir = Path(output_dir)
    files = plan_upload(output_dir, adapter_only=adapter_only, include_adapter=include_adapter)
    card = render_model_card(output_dir, repo_id=repo_id, adapter_only=adapter_only, license=license)
    if adapter_only and not is_hub_repo_id(card.data.base_model or ""):
        raise ValueError(
            f"An adapter-only repository is loaded on top of its base model, but the base model of {output_dir} is "
            f"{read_eval_results(output_dir)['base_model']!r}, not a Hub id; push the full checkpoint instead."
        )
    card_bytes = str(card).encode("utf-8")
    files.append(HubUpload(path_in_repo=run_folder.CARD_NAME, size=len(card_bytes), source=None))
    commit_message = commit_message or default_commit_message(output_dir, adapter_only=adapter_only)

    if dry_run:
        width = max(len(f.path_in_repo) for f in files)
        print(f"Dry run: would push {len(files)} files ({sum(f.size for f in files):,} bytes) to {repo_id}:")
        for f in files:
            print(f"  {f.path_in_repo:<{width}}  {f.size:>12,} bytes")
        print(f"Commit message: {commit_message}")
        return files

    token = resolve_hub_token(token)
    api = HfApi()
    api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    operations = [
        CommitOperationAdd(
            path_in_repo=f.path_in_repo, path_or_fileobj=card_bytes if f.source is None else str(f.source)
        )
        for f in files
    ]
    api.create_commit(repo_id, operations, commit_message=commit_message, token=token, repo_type="model")
    return files
