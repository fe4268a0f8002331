"""`--streaming`: the training split read as an `IterableDataset`, split between processes, checked as it is read,
and resumed at each process's position."""

from __future__ import annotations

import json
import shutil

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor

from helpers import CONFIGS, launch, log, results, train_args
from training.arguments import parse_args
from training.data import SamPairTransform
from training.streaming import StreamCollator, TrainStream, load_stream, stream_splits

COLUMNS = {"image_column": "image", "mask_column": "mask"}


def _ids(stream) -> list[str]:
    return [row["image"]["path"] for row in stream]


def test_a_metadata_folder_streams_every_training_row_once(blob_dataset_dir):
    stream = load_stream(str(blob_dataset_dir), split="train", num_shards=4, **COLUMNS)
    assert stream.n_shards == 4
    rows = _ids(stream)
    assert len(rows) == len(set(rows)) == 8  # the blob dataset's train split
    assert set(stream.features) == {"image", "mask"} and not stream.features["image"].decode
    shares = [_ids(datasets.distributed.split_dataset_by_node(stream, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == sorted(rows) and not set(shares[0]) & set(shares[1])
    assert len(_ids(load_stream(str(blob_dataset_dir), split="train", num_shards=4, max_samples=3, **COLUMNS))) == 3


def test_a_saved_dataset_streams_too(tmp_path, blob_dataset_dir):
    from training.data import load_raw_dataset

    load_raw_dataset(str(blob_dataset_dir), **COLUMNS).save_to_disk(tmp_path / "saved")
    stream = load_stream(str(tmp_path / "saved"), split="test", num_shards=2, **COLUMNS)
    assert len(list(stream)) == 4


def test_a_stream_needs_an_evaluation_split(tmp_path, blob_dataset_dir):
    assert stream_splits(str(blob_dataset_dir), train_split="train", eval_split=None, **COLUMNS) == ("train", "test")
    single = tmp_path / "single"
    shutil.copytree(blob_dataset_dir, single)
    lines = (single / "metadata.csv").read_text().splitlines()
    (single / "metadata.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    with pytest.raises(ValueError, match="--streaming needs an evaluation split"):
        stream_splits(str(single), train_split="train", eval_split=None, **COLUMNS)
    with pytest.raises(ValueError, match="No split `validation`"):
        stream_splits(str(blob_dataset_dir), train_split="train", eval_split="validation", **COLUMNS)


def test_streaming_arguments_are_checked(tiny_base_dir, blob_dataset_dir, capsys):
    common = ["--base_model", str(tiny_base_dir), "--dataset", str(blob_dataset_dir), "--streaming"]
    for extra, message in (([], "--streaming needs --max_train_steps"),
                           (["--max_train_steps", "2", "--checkpointing_steps", "epoch"], "--streaming has no epochs"),
                           (["--max_train_steps", "2", "--shuffle_buffer_size", "0"], "--shuffle_buffer_size must be")):
        with pytest.raises(SystemExit):
            parse_args(common + extra)
        assert message in capsys.readouterr().err


def test_a_bad_streamed_example_stops_the_run_naming_its_file(tmp_path, tiny_base_dir, blob_dataset_dir):
    broken = tmp_path / "broken"
    shutil.copytree(blob_dataset_dir, broken)
    (broken / "masks" / "3.png").write_bytes(b"not a png")
    processor = AutoProcessor.from_pretrained(tiny_base_dir)
    collator = StreamCollator(SamPairTransform(processor, **COLUMNS), label_size=16, process_index=1)
    stream = TrainStream(load_stream(str(broken), split="train", num_shards=1, **COLUMNS), batch_size=4,
                         collate_fn=collator)
    named = r"streamed example \(process 1\) .*masks/3\.png\): the mask file cannot be decoded"
    with pytest.raises(ValueError, match=named):
        for _ in zip(range(4), stream.batches()):
            pass


def test_passes_repeat_and_a_position_resumes_the_same_batches(tiny_base_dir, blob_dataset_dir):
    processor = AutoProcessor.from_pretrained(tiny_base_dir)

    def stream():
        data = load_stream(str(blob_dataset_dir), split="train", num_shards=4, **COLUMNS).shuffle(seed=0, buffer_size=3)
        return TrainStream(data, batch_size=3, collate_fn=StreamCollator(SamPairTransform(processor, **COLUMNS), 16))

    first = stream()
    batches = [batch["pixel_values"] for _, batch in zip(range(7), first.batches())]
    assert first.examples_in_first_pass == 8 and first.position == (2, 1)  # 3 batches (3 + 3 + 2) a pass
    assert not torch.equal(batches[0], batches[3])  # each pass reshuffled
    resumed = stream()
    again = [batch["pixel_values"] for _, batch in zip(range(3), resumed.batches(start=(1, 1)))]
    assert all(torch.equal(a, b) for a, b in zip(again, batches[4:]))


@pytest.mark.slow
def test_two_processes_stream_their_shares_and_resume_exactly(tmp_path, tiny_base_dir, blob_dataset_dir):
    common = ("--max_train_steps", "6", "--checkpointing_steps", "3", "--no_zeroshot_eval", "--streaming",
              "--shuffle_buffer_size", "4")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    two_processes = ["--config_file", str(CONFIGS / "cpu_2proc.yaml")]
    launch(two_processes, train_args(tiny_base_dir, blob_dataset_dir, full, *common), tmp_path)
    saved = results(full)
    assert saved["num_processes"] == 2
    shares = [process["examples_in_first_pass"] for process in saved["stream_per_process"]]
    assert sum(shares) == 8 and all(shares)  # the 8 training rows, split between the two processes
    assert [process["pass"] for process in saved["stream_per_process"]] == [2, 2]  # 2 batches of 2 a pass
    marker = json.loads((full / "checkpoints" / "step_3" / "icmoe_checkpoint.json").read_text())
    assert marker["stream_positions"] == [[1, 1], [1, 1]]
    assert [record["epoch"] for record in log(full)] == [0, 0, 1, 1, 2, 2]

    shutil.copytree(full / "checkpoints" / "step_3", resumed / "checkpoints" / "step_3")
    launch(two_processes, train_args(tiny_base_dir, blob_dataset_dir, resumed, *common, "--resume_from_checkpoint",
                                "latest"), tmp_path)
    expected, actual = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert [r["loss"] for r in log(resumed)] == [r["loss"] for r in log(full)][3:]


def test_zero_shot_evaluates_a_streamed_source(tmp_path, tiny_base_dir, blob_dataset_dir):
    """Zero-shot trains nothing: no --max_train_steps is needed, and the evaluation split is scored as usual."""
    from training.loop import run

    results = run(parse_args(["--base_model", str(tiny_base_dir), "--dataset", str(blob_dataset_dir), "--output_dir",
                              str(tmp_path / "zs"), "--method", "zeroshot", "--streaming",
                              "--dataloader_num_workers", "0", "--num_example_figures", "0"]))
    assert results["n_images"] == 4 and results["train_steps"] == 0
