"""icmoe-sam: IC-MoE adapters for the Segment Anything Model, as a Hugging Face Transformers model.

Importing this package registers `IcMoeSamConfig` (model type `icmoe_sam`) with `AutoConfig` and
`IcMoeSamModel` with `AutoModel` and `AutoModelForMaskGeneration`; `IcMoeSamSemanticConfig` (`icmoe_sam_semantic`)
and `IcMoeSamForSemanticSegmentation` with `AutoModel` and `AutoModelForSemanticSegmentation`; and the prompt-driven
segmentation pipeline (task `"medical-mask-segmentation"`) with `transformers.pipeline`. The prompt-free model's
pipeline is `transformers`' own task `"image-segmentation"`, found through the `custom_pipelines` of a folder saved
with `save_semantic_pretrained_with_pipeline` (it is not registered for every model of that task).
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration, AutoModelForSemanticSegmentation

from .adapter import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    load_icmoe_adapter,
    load_icmoe_adapter_config,
    save_icmoe_adapter,
)
from .configuration_icmoe_sam import IcMoeAdapterConfig, IcMoeSamConfig, IcMoeSamSemanticConfig
from .experts import IcMoeExperts
from .modeling_icmoe_sam import IcMoeSamModel, IcMoeSamOutput, get_icmoe_model
from .modeling_icmoe_semantic import IcMoeSamForSemanticSegmentation, IcMoeSemanticSegmenterOutput
from .imaging import CT_WINDOWS, check_boxes, load_medical_image, mask_box, scale_intensities, to_uint8_rgb
from .pipeline_icmoe_sam import (
    ICMOE_PIPELINE_TASK,
    IcMoeSamSegmentationPipeline,
    register_icmoe_pipeline,
    save_pretrained_with_pipeline,
)
from .pipeline_icmoe_semantic import (
    IcMoeSamSemanticSegmentationPipeline,
    class_maps_at_original_size,
    save_semantic_pretrained_with_pipeline,
)
from .layer import IcMoeLayer, IcMoeRouting
from .router import IcMoeVotingRouter

AutoConfig.register(IcMoeSamConfig.model_type, IcMoeSamConfig, exist_ok=True)
AutoModel.register(IcMoeSamConfig, IcMoeSamModel, exist_ok=True)
AutoModelForMaskGeneration.register(IcMoeSamConfig, IcMoeSamModel, exist_ok=True)
AutoConfig.register(IcMoeSamSemanticConfig.model_type, IcMoeSamSemanticConfig, exist_ok=True)
AutoModel.register(IcMoeSamSemanticConfig, IcMoeSamForSemanticSegmentation, exist_ok=True)
AutoModelForSemanticSegmentation.register(IcMoeSamSemanticConfig, IcMoeSamForSemanticSegmentation, exist_ok=True)
register_icmoe_pipeline()

__version__ = "0.1.0"

__all__ = [
    "CT_WINDOWS",
    "check_boxes",
    "mask_box",
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "ICMOE_PIPELINE_TASK",
    "IcMoeAdapterConfig",
    "IcMoeExperts",
    "IcMoeLayer",
    "IcMoeRouting",
    "IcMoeSamConfig",
    "IcMoeSamForSemanticSegmentation",
    "IcMoeSamModel",
    "IcMoeSamOutput",
    "IcMoeSamSegmentationPipeline",
    "IcMoeSamSemanticSegmentationPipeline",
    "IcMoeSamSemanticConfig",
    "IcMoeSemanticSegmenterOutput",
    "IcMoeVotingRouter",
    "class_maps_at_original_size",
    "get_icmoe_model",
    "load_icmoe_adapter",
    "load_icmoe_adapter_config",
    "load_medical_image",
    "register_icmoe_pipeline",
    "save_icmoe_adapter",
    "save_pretrained_with_pipeline",
    "save_semantic_pretrained_with_pipeline",
    "scale_intensities",
    "to_uint8_rgb",
]
