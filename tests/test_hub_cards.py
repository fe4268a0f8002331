"""Model cards: rendered from a training output folder, parsed back by huggingface_hub, loading code that runs."""

from __future__ import annotations

import json
import re

import numpy as np
import PIL.Image
import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hub_cards import TEMPLATE_PATH, is_hub_repo_id, public_name, render_model_card, write_model_card
from hub_cards.__main__ import main as hub_cards_main
from helpers import tiny_base_sam, tiny_sam_processor, trained_icmoe
from hub_fixtures import BASE_REPO, EVAL_RESULTS, write_output_dir


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    model = trained_icmoe(tiny_base_sam(), steps=1, base_model_name_or_path=BASE_REPO)
    return write_output_dir(tmp_path_factory.mktemp("run"), model, tiny_sam_processor())


def _with_results(output_dir, tmp_path, **changes):
    """A copy of the output folder's card inputs with some eval results changed."""
    folder = tmp_path / "variant"
    folder.mkdir()
    (folder / "config.json").write_text((output_dir / "config.json").read_text())
    (folder / "eval_results.json").write_text(json.dumps({**EVAL_RESULTS, **changes}))
    return folder


def _front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    assert match, "the card must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_card_round_trips_metadata_and_metrics(output_dir, tmp_path):
    path = write_model_card(output_dir, repo_id="org/icmoe-sam")
    assert path == output_dir / "README.md"
    card = ModelCard.load(path)
    assert card.data.base_model == BASE_REPO
    assert card.data.datasets == [EVAL_RESULTS["dataset"]]
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "mask-generation"
    assert card.data.license == "apache-2.0"
    assert set(card.data.tags) == {"medical", "segmentation", "sam", "mixture-of-experts", "icmoe"}
    assert card.data.model_name == "icmoe-sam"
    values = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert values == {"dice": EVAL_RESULTS["dice"], "iou": EVAL_RESULTS["iou"], "hd95": EVAL_RESULTS["hd95"]}
    for result in card.data.eval_results:
        assert result.task_type == "image-segmentation"
        assert result.dataset_type == EVAL_RESULTS["dataset"] and result.dataset_split == "test"


def test_model_index_is_valid(output_dir):
    metadata = _front_matter(str(render_model_card(output_dir, repo_id="org/icmoe-sam")))
    model_index = metadata["model-index"]
    assert len(model_index) == 1 and model_index[0]["name"] == "icmoe-sam"
    name, results = model_index_to_eval_results(model_index)
    assert name == "icmoe-sam" and len(results) == 3
    result = model_index[0]["results"][0]
    assert set(result) == {"task", "dataset", "metrics"}
    assert result["task"]["type"] == "image-segmentation"
    assert {"name", "type", "split"} <= set(result["dataset"])
    assert all({"type", "value"} <= set(metric) for metric in result["metrics"])


def test_card_body(output_dir):
    text = str(render_model_card(output_dir, repo_id="org/icmoe-sam"))
    assert "![Expert load](figures/expert_load.png)" in text
    assert "figures/loss.png" not in text  # only figures that exist are linked
    assert "arXiv:2510.17684" in text and "reconstructed from the abstract" in text
    assert "not a medical device" in text
    assert 'AutoModel.from_pretrained("org/icmoe-sam", trust_remote_code=True)' in text
    assert 'pipeline("medical-mask-segmentation", model="org/icmoe-sam", trust_remote_code=True)' in text
    assert "| **IC-MoE adapters** (this model) | 0.8125 ± 0.0500 | 0.6875 ± 0.0625 | 3.50 ± 1.25 | 4 |" in text
    assert "| zero-shot base SAM | 0.2500 | 0.1250 | 20.00 | 4 |" in text
    assert "| `expert_rank` | `4` |" in text
    assert "| Trainable parameters | 12,345 |" in text
    assert "| Prompts |" not in text  # only when eval_results.json names them


def test_prompt_row(output_dir, tmp_path):
    folder = _with_results(output_dir, tmp_path, prompt="box")
    assert "| Prompts | box (derived from the ground-truth masks) |\n| Training steps | 2 |" in str(
        render_model_card(folder)
    )


def test_adapter_card(output_dir):
    text = str(render_model_card(output_dir, repo_id="org/icmoe-sam-adapter", adapter_only=True))
    card = ModelCard(text)
    assert card.data.base_model == BASE_REPO and card.data.base_model_relation == "adapter"
    assert f'load_icmoe_adapter("{BASE_REPO}", "org/icmoe-sam-adapter")' in text
    assert "trust_remote_code" not in text
    assert "`icmoe_adapter_config.json`" in text


def test_local_paths_stay_out_of_metadata(output_dir, tmp_path):
    local_data = tmp_path / "data" / "kvasir"
    local_data.mkdir(parents=True)
    folder = _with_results(output_dir, tmp_path, dataset=str(local_data), base_model="/models/sam-vit-base")
    card = render_model_card(folder, repo_id="org/icmoe-sam-kvasir")
    assert card.data.datasets is None and card.data.base_model is None
    # Local data and bases are named by their folder only: no local path reaches a card that is pushed.
    assert "`kvasir` (local data)" in str(card)
    assert "`sam-vit-base` (a local checkpoint, not on the Hub)" in str(card)
    assert card.data.eval_results[0].dataset_name == "kvasir"
    assert str(tmp_path) not in str(card) and "/models/" not in str(card)


@pytest.mark.parametrize("value, expected", [
    ("org/tiny-polyps", "org/tiny-polyps"),
    ("/data/scans/kvasir", "kvasir"),
    ("/data/scans/kvasir/", "kvasir"),
    ("relative/folder/of/data", "data"),
    ("squad", "squad"),
])
def test_public_name(value, expected):
    assert public_name(value) == expected


def test_public_name_of_an_existing_relative_folder(tmp_path, monkeypatch):
    (tmp_path / "org" / "scans").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "org" / "scans")
    assert public_name(".") == "scans"
    monkeypatch.chdir(tmp_path)
    assert public_name("org/scans") == "scans"  # exists here, so a folder, not a Hub id


def test_non_finite_metric_is_left_out(output_dir, tmp_path):
    folder = _with_results(output_dir, tmp_path, hd95=float("inf"), comparisons={})
    card = render_model_card(folder)
    assert {result.metric_type for result in card.data.eval_results} == {"dice", "iou"}
    assert "| n/a |" in str(card) and "zero-shot base model was not evaluated" in str(card)
    assert ModelCard(str(card)).data.eval_results[0].metric_value == EVAL_RESULTS["dice"]


def test_card_loading_code_runs(output_dir, monkeypatch, tmp_path):
    """The Python blocks of the card, pointed at the output folder, run as written."""
    monkeypatch.chdir(tmp_path)
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save("scan.png")
    text = str(render_model_card(output_dir))
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "model_card", "exec"), namespace)
    assert namespace["masks"][0].shape[-2:] == (48, 40)
    assert namespace["result"]["masks"].shape == (1, 48, 40)


@pytest.mark.parametrize(
    "method, expected",
    [
        ("zeroshot", "No weights were trained; use the base model itself"),
        ("lora", 'AutoModelForMaskGeneration.from_pretrained("org/lora-sam")'),
    ],
)
def test_baseline_cards(output_dir, tmp_path, method, expected):
    folder = _with_results(output_dir, tmp_path, method=method)
    (folder / "config.json").write_text(json.dumps({"model_type": "sam"}))  # a merged SAM, no IC-MoE config
    text = str(render_model_card(folder, repo_id=f"org/{method}-sam"))
    assert expected in text and "load_icmoe_adapter" not in text and "trust_remote_code" not in text
    card = ModelCard(text)
    assert card.data.eval_results[0].metric_value == EVAL_RESULTS["dice"]
    assert "icmoe" not in card.data.tags and "mixture-of-experts" not in card.data.tags


def test_icmoe_card_tags(output_dir):
    tags = render_model_card(output_dir).data.tags
    assert {"icmoe", "mixture-of-experts", "medical", "sam"} <= set(tags)


def test_card_states_the_run_settings_stand_in_and_evaluation_units(output_dir, tmp_path):
    folder = _with_results(
        output_dir, tmp_path, base_model_is_standin=True, seed=7, learning_rate=3e-4, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, num_processes=2, n_images=19, n_eval_source_images=4,
    )
    text = str(render_model_card(folder))
    assert "bundled **stand-in**" in text
    assert "| Learning rate | 0.0003 |" in text and "| Seed | 7 |" in text
    assert "| Batch size | 4 per device x 2 accumulation x 2 processes = 16 |" in text
    assert "19 objects, one prompt each, from 4 images" in text


@pytest.mark.parametrize(
    "change, match",
    [({"method": "magic"}, "`method` must be one of"), ({"dice": None, "iou": None}, None)],
    ids=["bad-method", "missing-metrics-ok"],
)
def test_eval_results_validation(output_dir, tmp_path, change, match):
    folder = _with_results(output_dir, tmp_path, **change)
    if match is None:
        assert render_model_card(folder).data.eval_results[0].metric_type == "hd95"
    else:
        with pytest.raises(ValueError, match=match):
            render_model_card(folder)


def test_missing_inputs_raise(tmp_path, output_dir):
    with pytest.raises(ValueError, match="eval_results.json is missing"):
        render_model_card(tmp_path)
    with pytest.raises(ValueError, match="namespace/name"):
        render_model_card(output_dir, repo_id="not a repo id")
    (tmp_path / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    with pytest.raises(ValueError, match="adapter-only card needs"):
        render_model_card(tmp_path, adapter_only=True)


def test_cli_rerenders(output_dir, capsys):
    (output_dir / "README.md").unlink(missing_ok=True)
    hub_cards_main([str(output_dir), "--repo_id", "org/from-cli"])
    assert "Wrote" in capsys.readouterr().out
    assert ModelCard.load(output_dir / "README.md").data.model_name == "from-cli"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("facebook/sam-vit-base", True),
        ("org/data.v2", True),
        ("/abs/path", False),
        ("rel/../x", False),
        ("no-namespace", False),
        ("a/b/c", False),
        ("", False),
        (None, False),
    ],
)
def test_is_hub_repo_id(value, expected):
    assert is_hub_repo_id(value) is expected


def test_one_template():
    assert TEMPLATE_PATH.is_file() and TEMPLATE_PATH.read_text().startswith("---\n{{ card_data }}\n---")


def test_mixture_diagnostics_section(output_dir, tmp_path):
    diagnostics = {"expert_load_by_kind": {"basic": 0.2, "semantic": 0.8}, "vote_entropy": 0.66616}
    text = str(render_model_card(_with_results(output_dir, tmp_path, diagnostics=diagnostics)))
    assert "### Mixture diagnostics" in text
    assert "| `expert_load_by_kind` | basic 0.2, semantic 0.8 |" in text and "| `vote_entropy` | 0.6662 |" in text
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "### Mixture diagnostics" not in str(render_model_card(_with_results(output_dir, plain)))


@pytest.mark.parametrize("placement, contrastive, votes, where", [
    ("attention", 0.0, 0.0, "beside the attention's `qkv` projection"),
    ("mlp", 0.01, 1.0, "beside the MLP"),
])
def test_card_describes_the_trained_configuration(output_dir, tmp_path, placement, contrastive, votes, where):
    folder = _with_results(output_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["icmoe_config"].update(expert_placement=placement, contrastive_loss_coef=contrastive,
                                  pixel_vote_weight=votes)
    (folder / "config.json").write_text(json.dumps(config))
    text = str(render_model_card(folder))
    assert f"IC-MoE adds a mixture of experts {where} of the ViT blocks" in text
    assert ("semantic-guided contrastive loss" in text) == (contrastive > 0)
    assert ("whose votes weigh each expert's pixel" in text) == (votes > 0)
    assert ("a router sends each token" in text) == (votes == 0)


def test_adapter_baseline_card_is_not_described_as_icmoe(output_dir, tmp_path):
    """The `adapter` baseline is stored as a one-expert IC-MoE model (so it loads like one) but is not IC-MoE."""
    folder = _with_results(output_dir, tmp_path, method="adapter")
    text = str(render_model_card(folder, repo_id="org/adapter-sam"))
    assert "trained with bottleneck adapters as a baseline of the IC-MoE project" in text
    assert "IC-MoE adds a mixture of experts" not in text
