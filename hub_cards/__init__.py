"""Model cards of IC-MoE SAM training outputs: one Jinja template, rendered whole with `ModelCard.from_template`.

`render_model_card(output_dir)` reads `eval_results.json` and the adapter configuration of a training output folder;
`write_model_card(output_dir)` saves the card as its `README.md`; `python -m hub_cards <output_dir>` re-renders it.
"""

from .card import (
    TEMPLATE_PATH,
    is_hub_repo_id,
    public_name,
    read_adapter_config,
    read_eval_results,
    render_model_card,
    write_model_card,
)

__all__ = [
    "TEMPLATE_PATH",
    "is_hub_repo_id",
    "public_name",
    "read_adapter_config",
    "read_eval_results",
    "render_model_card",
    "write_model_card",
]
