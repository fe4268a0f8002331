"""Training from a stream (`--streaming`): the training split read as a `datasets.IterableDataset` instead of being
loaded, checked and cached up front. For a Hub dataset, or a local folder too large to go through the cache first.

- Sources: a Hub dataset id (`load_dataset(..., streaming=True)`), a folder with a `metadata.csv` (its rows become
  the stream's shards) or a `save_to_disk` folder (`to_iterable_dataset`).
- Each process reads its own share: `split_dataset_by_node` gives whole shards to each process where the shard count
  divides by the world size, and otherwise every world-size-th example.
- Shuffled through a buffer (`--shuffle_buffer_size`) and in the order of its shards, reseeded for every pass.
- Every example is checked as it arrives, by the rules of the up-front check (`data.check_pair`), and a bad one stops
  the run naming its file: a stream is never skipped past silently.
- Endless: when a process's share ends, its next pass starts. Each process therefore trains exactly
  `--max_train_steps` steps whatever its share's length (DDP needs every process at every step), and a checkpoint
  stores every process's position (pass, batches read in it). A resumed run re-reads the batches of the current pass
  before that position (read and preprocessed, not trained on), so it trains on exactly what the uninterrupted run
  did.

The evaluation split is not streamed: it is loaded as a map-style dataset (for a Hub dataset, that split alone) and
checked up front, since every process must score it whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from .data import METADATA_FILE, SPLIT_PREFERENCE, SamPairTransform, check_pair, collate, metadata_splits

# A local folder's rows are cut into this many shards per process (fewer for a small folder), so that the processes
# and their data-loader workers get whole shards and the buffer shuffles across shards.
SHARDS_PER_PROCESS = 8


def _local_kind(path: Path) -> str | None:
    if path.is_dir() and (path / METADATA_FILE).is_file():
        return "metadata"
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
        return "saved"
    if path.exists():
        raise ValueError(
            f"{path} is neither a `save_to_disk` folder nor a folder with a {METADATA_FILE} "
            "(columns file_name,mask_file_name[,split])."
        )
    return None


def _split_names(source: str, image_column: str, mask_column: str) -> list[str]:
    path = Path(source)
    kind = _local_kind(path)
    if kind == "metadata":
        return list(metadata_splits(path, image_column=image_column, mask_column=mask_column))
    if kind == "saved":
        saved = datasets.load_from_disk(str(path))
        return list(saved) if isinstance(saved, datasets.DatasetDict) else ["train"]
    return datasets.get_dataset_split_names(source)


def stream_splits(source: str, *, train_split: str, eval_split: str | None, image_column: str,
                  mask_column: str) -> tuple[str, str]:
    """The training and evaluation split names of a streamed source. A stream cannot be held out from, so the
    evaluation split must exist: `eval_split`, else `test`, else `validation`."""
    names = _split_names(source, image_column, mask_column)
    if train_split not in names:
        raise ValueError(f"No split `{train_split}` in {source} (splits: {names}).")
    if eval_split is not None:
        if eval_split not in names:
            raise ValueError(f"No split `{eval_split}` in {source} (splits: {names}).")
        return train_split, eval_split
    for name in SPLIT_PREFERENCE:
        if name in names and name != train_split:
            return train_split, name
    raise ValueError(
        f"--streaming needs an evaluation split in {source} (splits: {names}): a stream cannot be held out from. "
        "Add a `test` or `validation` split (a split column in metadata.csv), or name one with --eval_split."
    )


def _metadata_rows(shards: list[dict[str, list[str]]]):
    for shard in shards:
        columns = list(shard)
        for values in zip(*shard.values()):
            yield dict(zip(columns, values))


def load_stream(source: str, *, split: str, image_column: str, mask_column: str, num_shards: int,
                max_samples: int | None = None) -> datasets.IterableDataset:
    """`split` of `source` as an `IterableDataset` whose image and mask columns are undecoded (`check_pair` decodes
    them, naming the file when one is broken)."""
    path = Path(source)
    kind = _local_kind(path)
    if kind == "metadata":
        columns = metadata_splits(path, image_column=image_column, mask_column=mask_column)[split]
        rows = len(columns[image_column])
        count = max(1, min(num_shards, rows))
        shards = [{name: values[index::count] for name, values in columns.items()} for index in range(count)]
        features = datasets.Features({image_column: datasets.Image(), mask_column: datasets.Image()})
        stream = datasets.IterableDataset.from_generator(_metadata_rows, features=features,
                                                         gen_kwargs={"shards": shards})
    elif kind == "saved":
        saved = datasets.load_from_disk(str(path))
        part = saved[split] if isinstance(saved, datasets.DatasetDict) else saved
        stream = part.to_iterable_dataset(num_shards=max(1, min(num_shards, len(part))))
    else:
        stream = datasets.load_dataset(source, split=split, streaming=True)
    missing = [column for column in (image_column, mask_column) if column not in (stream.column_names or [])]
    if missing and stream.column_names is not None:
        raise ValueError(
            f"Split `{split}` of {source} has no column {missing[0]!r} (columns: {stream.column_names}); set "
            "--image_column / --mask_column."
        )
    for column in (image_column, mask_column):
        stream = stream.cast_column(column, datasets.Image(decode=False))
    return stream.take(max_samples) if max_samples else stream


@dataclass
class StreamCollator:
    """Checks each example as it arrives (naming its file when it fails), then preprocesses the batch for SAM."""

    transform: SamPairTransform
    label_size: int | None
    process_index: int = 0

    def __call__(self, rows: list[dict]) -> dict:
        image_column, mask_column = self.transform.image_column, self.transform.mask_column
        decoded = [
            check_pair(row[image_column], row[mask_column], label_ids=self.transform.label_ids,
                       label_size=self.label_size, where=f"streamed example (process {self.process_index})")
            for row in rows
        ]
        batch = self.transform({image_column: [image for image, _ in decoded], mask_column: [m for _, m in decoded]})
        return collate([dict(zip(batch, values)) for values in zip(*batch.values())])


@dataclass
class TrainStream:
    """One process's endless batches of the stream, and where it is: `position` = (pass, batches read in it)."""

    dataset: datasets.IterableDataset  # this process's share, shuffled
    batch_size: int
    collate_fn: StreamCollator
    num_workers: int = 0
    position: tuple[int, int] = (0, 0)
    examples_in_first_pass: int | None = field(default=None, init=False)

    def batches(self, start: tuple[int, int] = (0, 0)):
        """Batches from `start` on, pass after pass; the batches of `start`'s pass before it are read, not given."""
        epoch, done = start
        self.position = (epoch, done)
        while True:
            self.dataset.set_epoch(epoch)
            # A generator of its own: a loader's iterator otherwise draws its base seed from the global RNG, and a
            # resumed run starts its passes at other points of that RNG's sequence than the uninterrupted run.
            loader = DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=self.collate_fn,
                                num_workers=self.num_workers, generator=torch.Generator().manual_seed(epoch))
            read, examples = 0, 0
            for batch in loader:
                read += 1
                examples += len(batch["labels"])
                if read <= done:
                    continue
                self.position = (epoch, read)
                yield batch
            if read == 0:
                raise ValueError(
                    f"Process {self.collate_fn.process_index} got no example from the stream: it has fewer examples "
                    "than processes."
                )
            if epoch == 0:
                self.examples_in_first_pass = examples
            epoch, done = epoch + 1, 0

    def summary(self) -> dict:
        """Where this process's stream stands, and the size of its share (known once a pass has ended)."""
        return {"pass": self.position[0], "batches_read_in_pass": self.position[1],
                "examples_in_first_pass": self.examples_in_first_pass}

    def set_epoch(self, epoch: int) -> None:
        """Passes are counted by the stream itself (each process's share has its own length)."""


def train_stream(args, processor, accelerator, *, columns: dict, label_size: int, train_split: str,
                 num_workers: int) -> TrainStream:
    """This process's share of the training stream, shuffled, checked and preprocessed as it is read."""
    world, rank = accelerator.num_processes, accelerator.process_index
    stream = load_stream(args.dataset, split=train_split, image_column=args.image_column, mask_column=args.mask_column,
                         num_shards=SHARDS_PER_PROCESS * world, max_samples=args.max_train_samples)
    stream = stream.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size)
    share = split_dataset_by_node(stream, rank=rank, world_size=world)
    collator = StreamCollator(SamPairTransform(processor, **columns), label_size=label_size, process_index=rank)
    return TrainStream(share, batch_size=args.per_device_train_batch_size, collate_fn=collator, num_workers=num_workers)
