"""Loading by Hub repo id, for real: repositories published with `push_output_dir` into local git repositories,
served over HTTP by olah on 127.0.0.1, and loaded in a fresh process through `HF_ENDPOINT` with an empty cache.

`push_output_dir` runs unchanged; only `HfApi.create_repo`/`create_commit` are redirected to write git commits into
olah's mirror folder, so the test also proves that what a push uploads is enough to load the model.

olah gap (worked around in `olah_local_mirror.py`, everything else is olah's answer): for a file missing from a
local mirror olah answers `401 RepoNotFound` where the Hub answers `404 EntryNotFound`, and transformers' probes of
optional files need the 404.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi

from helpers import tiny_base_sam, tiny_sam_processor, trained_icmoe
from hub_fixtures import BASE_REPO, sample_image, write_output_dir
from modeling_icmoe import ICMOE_PIPELINE_TASK, IcMoeSamSegmentationPipeline
from training.hub import push_output_dir

pytest.importorskip("olah", reason="serving local git repositories as a Hub needs olah (`pip install olah`)")
pytestmark = pytest.mark.slow  # a local Hub server and a fresh client process per test
if shutil.which("git") is None:
    pytest.skip("publishing into local git repositories needs the git executable", allow_module_level=True)

FULL_REPO = "org/icmoe-sam"
ADAPTER_REPO = "org/icmoe-sam-adapter"
REPO_ROOT = Path(__file__).resolve().parents[1]
MIRROR_SERVER = Path(__file__).with_name("olah_local_mirror.py")
BOXES = [[12.0, 10.0, 40.0, 30.0], [2.0, 3.0, 20.0, 44.0]]
SERVER_START_TIMEOUT_S = 90
NAMED_DATASET, UNNAMED_DATASET = "org/tiny-organs", "org/tiny-unnamed"
NAMED_CLASSES = {"0": "background", "1": "liver", "2": "spleen"}


def _git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=icmoe-tests", "-c", "user.email=tests@icmoe.invalid", *args],
        cwd=folder,
        check=True,
        capture_output=True,
    )


class GitMirrorHub:
    """Stands in for the Hub's write API: each repository is a git repository in olah's mirror folder."""

    def __init__(self, mirrors: Path):
        self.mirrors = mirrors

    def folder(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.mirrors / f"{repo_type}s" / repo_id

    def create_repo(self, repo_id: str, *, exist_ok: bool = False, **_) -> None:
        folder = self.folder(repo_id)
        if folder.exists():
            assert exist_ok, f"{repo_id} exists"
            return
        folder.mkdir(parents=True)
        _git(folder, "init", "-q", "-b", "main")

    def create_commit(self, repo_id: str, operations, *, commit_message: str, **_) -> None:
        folder = self.folder(repo_id)
        for operation in operations:
            target = folder / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            with operation.as_file() as f:
                target.write_bytes(f.read())
        _git(folder, "add", "-A")
        _git(folder, "commit", "-q", "-m", commit_message)

    def publish_dataset(self, repo_id: str, files: dict[str, str]) -> None:
        """A dataset repository holding `files` (name -> text)."""
        folder = self.folder(repo_id, "dataset")
        folder.mkdir(parents=True)
        _git(folder, "init", "-q", "-b", "main")
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
        _git(folder, "add", "-A")
        _git(folder, "commit", "-q", "-m", "Upload dataset files")

    def publish_folder(self, repo_id: str, source: Path) -> None:
        self.create_repo(repo_id)
        shutil.copytree(source, self.folder(repo_id), dirs_exist_ok=True)
        _git(self.folder(repo_id), "add", "-A")
        _git(self.folder(repo_id), "commit", "-q", "-m", "Upload base SAM")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The base SAM, the full IC-MoE checkpoint and its adapter-only repository, in olah's mirror folder."""
    root = tmp_path_factory.mktemp("hub")
    hub = GitMirrorHub(root / "mirrors")
    base, processor = tiny_base_sam(), tiny_sam_processor()
    base_folder = root / "base"
    base.save_pretrained(base_folder)
    processor.save_pretrained(base_folder)
    hub.publish_folder(BASE_REPO, base_folder)
    # Class names of prompt-free datasets: the Hub's usual `id2label.json`, and a repository with none.
    hub.publish_dataset(NAMED_DATASET, {"id2label.json": json.dumps(NAMED_CLASSES), "README.md": "# tiny organs\n"})
    hub.publish_dataset(UNNAMED_DATASET, {"README.md": "# no class names\n"})

    model = trained_icmoe(base, base_model_name_or_path=BASE_REPO)
    output_dir = write_output_dir(root / "run", model, processor)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: hub.create_repo(repo_id, **kw))
        patch.setattr(HfApi, "create_commit", lambda self, repo_id, ops, **kw: hub.create_commit(repo_id, ops, **kw))
        push_output_dir(output_dir, FULL_REPO, token="unused")
        push_output_dir(output_dir, ADAPTER_REPO, adapter_only=True, token="unused")
    return {"root": root, "mirrors": hub.mirrors, "model": model, "processor": processor}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def hub_endpoint(published):
    root, port = published["root"], _free_port()
    config = root / "olah.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [basic]
            host = "127.0.0.1"
            port = {port}
            repos-path = "{root / "olah_cache"}"
            mirrors-path = ["{published["mirrors"]}"]

            [accessibility]
            offline = true
            """
        )
    )
    log_path = root / "olah.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(MIRROR_SERVER), "--config", str(config), "--log-path", str(root / "logs")],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"olah exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{endpoint}/api/models/{FULL_REPO}/revision/main", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"olah did not answer within {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# Runs in a fresh interpreter. First with `modeling_icmoe` unimportable (remote code only), then with it imported.
CLIENT = """
import importlib.abc, json, re, sys
import numpy as np, torch

class BlockPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_icmoe":
            raise ImportError(f"{name} is blocked: this part of the test loads remote code only")

blocker = BlockPackage()
sys.meta_path.insert(0, blocker)
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from huggingface_hub import hf_hub_download
from transformers import AutoConfig, AutoModel, SamModel, SamProcessor, pipeline

inputs = torch.load(args["inputs"])
image = np.load(args["image"])

def forward(model):
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"])
    return {"pred_masks": out.pred_masks, "iou_scores": out.iou_scores}

def segment(segmenter):
    result = segmenter(image, input_boxes=args["boxes"])
    return {"masks": torch.from_numpy(result["masks"]), "scores": torch.from_numpy(result["scores"])}

results = {}
remote = AutoModel.from_pretrained("org/icmoe-sam", trust_remote_code=True).eval()
assert type(remote).__module__.startswith("transformers_modules."), type(remote).__module__
results["remote_code"] = forward(remote)
results["custom_pipelines"] = AutoConfig.from_pretrained("org/icmoe-sam", trust_remote_code=True).custom_pipelines
results["remote_pipeline"] = segment(pipeline(args["task"], model="org/icmoe-sam", trust_remote_code=True, device=-1))

# The card's own loading code, by repo id, run as written (it reads scan.png from the working directory).
card = open(hf_hub_download("org/icmoe-sam", "README.md"), encoding="utf-8").read()
namespace = {}
for block in re.findall(r"```python\\n(.*?)```", card, flags=re.S):
    exec(block, namespace)
results["card_masks"] = namespace["result"]["masks"].shape

sys.meta_path.remove(blocker)
sys.path.insert(0, args["repo_root"])
import modeling_icmoe

installed = AutoModel.from_pretrained("org/icmoe-sam").eval()
assert type(installed) is modeling_icmoe.IcMoeSamModel, type(installed)
results["installed"] = forward(installed)
adapted = modeling_icmoe.load_icmoe_adapter("org/sam-base", "org/icmoe-sam-adapter")
results["adapter"] = forward(adapted)
processor = SamProcessor.from_pretrained("org/sam-base")
results["adapter_pipeline"] = segment(modeling_icmoe.IcMoeSamSegmentationPipeline(model=adapted, processor=processor))
results["base_is_sam"] = type(SamModel.from_pretrained("org/sam-base")).__name__
torch.save(results, args["output"])
"""


@pytest.fixture(scope="module")
def client_results(published, hub_endpoint):
    root = published["root"] / "client"
    root.mkdir()
    generator = torch.Generator().manual_seed(3)
    inputs = {
        "pixel_values": torch.randn(2, 3, 64, 64, generator=generator),
        "input_boxes": torch.tensor([[[4.0, 6.0, 40.0, 44.0]], [[10.0, 12.0, 56.0, 60.0]]]),
    }
    torch.save(inputs, root / "inputs.pt")
    np.save(root / "image.npy", sample_image())
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(root / "scan.png")
    args = {
        "inputs": str(root / "inputs.pt"),
        "image": str(root / "image.npy"),
        "boxes": BOXES,
        "task": ICMOE_PIPELINE_TASK,
        "repo_root": str(REPO_ROOT),
        "output": str(root / "results.pt"),
        "threads": torch.get_num_threads(),
    }
    completed = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(args)], cwd=root, env=client_env(hub_endpoint, root),
        capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return inputs, torch.load(root / "results.pt")


def client_env(endpoint: str, root: Path) -> dict[str, str]:
    """A fresh client's environment: the local Hub, an empty cache, no token, not offline."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PYTHONPATH")
    }
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(root / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    return env


CLASS_NAMES_CLIENT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from training.semantic import class_names
print(json.dumps(class_names(sys.argv[2], None)))
"""


@pytest.mark.parametrize("repo_id", [NAMED_DATASET, UNNAMED_DATASET])
def test_class_names_of_a_hub_dataset(published, hub_endpoint, repo_id, tmp_path):
    """`--prompt none` on a Hub dataset id takes the class names from the repository's own file, fetched over HTTP;
    a repository without one is refused with the files it looked for."""
    completed = subprocess.run([sys.executable, "-c", CLASS_NAMES_CLIENT, str(REPO_ROOT), repo_id], cwd=tmp_path,
                               env=client_env(hub_endpoint, tmp_path), capture_output=True, text=True, timeout=120)
    if repo_id == NAMED_DATASET:
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert json.loads(completed.stdout.strip().splitlines()[-1]) == NAMED_CLASSES
    else:
        assert completed.returncode != 0
        assert f"labels.json or id2label.json in the Hub dataset {UNNAMED_DATASET} (it has neither)" in completed.stderr


def _local_forward(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.pred_masks, out.iou_scores


@pytest.mark.parametrize("source", ["remote_code", "installed", "adapter"])
def test_model_by_repo_id_is_identical(published, client_results, source):
    inputs, results = client_results
    pred_masks, iou_scores = _local_forward(published["model"], inputs)
    assert torch.equal(results[source]["pred_masks"], pred_masks)
    assert torch.equal(results[source]["iou_scores"], iou_scores)


@pytest.mark.parametrize("source", ["remote_pipeline", "adapter_pipeline"])
def test_pipeline_by_repo_id_is_identical(published, client_results, source):
    _, results = client_results
    local = IcMoeSamSegmentationPipeline(model=published["model"], processor=published["processor"], device=-1)
    expected = local(sample_image(), input_boxes=BOXES)
    assert np.array_equal(results[source]["masks"].numpy(), expected["masks"])
    assert np.array_equal(results[source]["scores"].numpy(), expected["scores"])


def test_published_config_and_card(client_results):
    _, results = client_results
    assert ICMOE_PIPELINE_TASK in results["custom_pipelines"]
    assert results["card_masks"] == (1, 48, 40)
    assert results["base_is_sam"] == "SamModel"
