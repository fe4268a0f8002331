"""Re-renders the model card of a training output folder: `python -m hub_cards <output_dir> [--repo_id ns/name]`."""

from __future__ import annotations

import argparse

from .card import write_model_card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hub_cards", description=__doc__)
    parser.add_argument("output_dir", help="The folder training/run.py wrote (with eval_results.json).")
    parser.add_argument("--repo_id", default=None, help="Hub id the card is for (used in the loading code).")
    parser.add_argument("--adapter_only", action="store_true", help="Render the adapter-only repository's card.")
    parser.add_argument("--license", default="apache-2.0", help="License identifier of the weights.")
    args = parser.parse_args(argv)
    path = write_model_card(args.output_dir, repo_id=args.repo_id, adapter_only=args.adapter_only, license=args.license)
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
