"""icmoe-sam: IC-MoE adapters for the Segment Anything Model, as a Hugging Face Transformers model.

Importing this package registers `IcMoeSamConfig` (model type `icmoe_sam`) with `AutoConfig` and
`IcMoeSamModel` with `AutoModel` and `AutoModelForMaskGeneration`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration

from .adapter import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    load_icmoe_adapter,
    load_icmoe_adapter_config,
    save_icmoe_adapter,
)
from .configuration_icmoe_sam import IcMoeAdapterConfig, IcMoeSamConfig
from .experts import IcMoeExperts
from .modeling_icmoe_sam import IcMoeSamModel, IcMoeSamOutput, get_icmoe_model
from .router import IcMoeLayer, IcMoeRouting, IcMoeVotingRouter

AutoConfig.register(IcMoeSamConfig.model_type, IcMoeSamConfig, exist_ok=True)
AutoModel.register(IcMoeSamConfig, IcMoeSamModel, exist_ok=True)
AutoModelForMaskGeneration.register(IcMoeSamConfig, IcMoeSamModel, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "IcMoeAdapterConfig",
    "IcMoeExperts",
    "IcMoeLayer",
    "IcMoeRouting",
    "IcMoeSamConfig",
    "IcMoeSamModel",
    "IcMoeSamOutput",
    "IcMoeVotingRouter",
    "get_icmoe_model",
    "load_icmoe_adapter",
    "load_icmoe_adapter_config",
    "save_icmoe_adapter",
]
